"""Where and in which precision the backbone runs: the typed :class:`Runtime`, device choice, autocast dtype,
native-bf16 detection.

Import-light beyond torch itself (no torchvision): ``dino info`` and the trainer use it without the image stack.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from dino.data.constants import DEFAULT_MAX_TOKENS

__all__ = [
    "NATIVE_BF16_FLAGS",
    "TORCH_DTYPES",
    "DTypeName",
    "Runtime",
    "autocast_context",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "cpuinfo_has_native_bf16",
    "pick_device",
    "torch_dtype",
]

DTypeName = Literal["auto", "fp32", "bf16", "fp16"]
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags of native bf16 arithmetic: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``fp32``, ``bf16`` or ``fp16``."""
    if name not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; any other value is a ``torch.device`` string.

    Raises:
        ValueError: `preference` is not a device name, or names a device this machine does not have.
    """
    if preference != "auto":
        try:
            device = torch.device(preference)
        except RuntimeError:
            raise ValueError(f"device {preference!r}: not a device name (auto, cpu, cuda, cuda:1, mps …)") from None
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
            raise ValueError(f"device {preference!r}: this machine has {found}; use --device auto or cpu")
        mps = getattr(torch.backends, "mps", None)
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(f"device {preference!r}: Apple MPS is not available here; use --device auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` on `device` with `dtype`, or a no-op context for None (plain fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: the BF16 extension).

    Read from the flags the kernel lists (``/proc/cpuinfo``) or, on macOS, from ``sysctl``; without native support
    bf16 autocast is emulated and runs slower than fp32 (about 4× slower on an AVX2-only EPYC). The environment
    variable ``DINO_CPU_BF16=1`` (or ``0``) overrides the detection.
    """
    forced = os.environ.get("DINO_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if sys.platform == "darwin":
        probe = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        return probe.stdout.strip() == "1"
    try:
        with open("/proc/cpuinfo") as handle:
            return cpuinfo_has_native_bf16(handle.read())
    except OSError:
        return False


def cpuinfo_has_native_bf16(cpuinfo: str) -> bool:
    """Whether the first CPU of a ``/proc/cpuinfo`` text lists a native bf16 flag (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return not NATIVE_BF16_FLAGS.isdisjoint(value.split())
    return False


def autocast_dtype(device: torch.device, dtype: DTypeName = "auto") -> torch.dtype | None:
    """The autocast dtype to use, or None for plain fp32.

    ``auto`` is bf16 where it is fast: on CUDA and on CPUs that compute it natively (:func:`cpu_has_native_bf16`);
    fp32 elsewhere (other CPUs, Apple MPS). Protocol evaluations default to ``fp32``, the reference's precision, so
    that their numbers stay the reference's.
    """
    if dtype == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    return None if dtype == "fp32" else TORCH_DTYPES[dtype]


@dataclass(frozen=True)
class Runtime:
    """How a backbone runs over a list of images: the options every image-reading function shares.

    Functions that extract features take one ``runtime`` instead of loose keyword options; the command line builds
    it from ``--device``, ``--dtype``, ``--batch-size``, ``--workers``, ``--no-progress`` and ``--max-tokens``
    (:func:`dino.cli.arguments.runtime_from_args`). Change one field with ``dataclasses.replace``.

    Attributes:
        device: ``auto`` (CUDA, then Apple MPS, then CPU) or a torch device string (``cpu``, ``cuda:1`` …).
        dtype: Autocast precision. ``auto`` is bf16 where it is native and fp32 elsewhere (:func:`autocast_dtype`);
            protocol evaluations pass ``fp32``, the reference's precision.
        batch_size: Images per forward pass.
        num_workers: DataLoader processes decoding images (0: in the calling process).
        progress: Show progress bars.
        max_tokens: Patch tokens one preprocessed image may make; a larger input is refused before it is resized
            (:data:`dino.data.constants.DEFAULT_MAX_TOKENS`; None for no limit).
    """

    device: str = "auto"
    dtype: DTypeName = "auto"
    batch_size: int = 32
    num_workers: int = 0
    progress: bool = True
    max_tokens: int | None = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in TORCH_DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose auto, fp32, bf16 or fp16")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (or None for no limit), got {self.max_tokens}")

    def torch_device(self) -> torch.device:
        """The device :attr:`device` names, checked to exist here (:func:`pick_device`)."""
        return pick_device(self.device)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on `device` (None: plain fp32); ``auto`` is resolved here and nowhere else."""
        return autocast_dtype(device, self.dtype)
