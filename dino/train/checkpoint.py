"""Training checkpoints in the official full layout (SPEC §7), loadable with ``weights_only=True``.

Keys: ``student`` (``module.backbone.*`` / ``module.head.*``), ``teacher`` (``backbone.*`` / ``head.*``),
``optimizer``, ``epoch`` (the epoch to start from, = completed epochs at an epoch boundary), ``dino_loss``
(``{'center': (1, K)}``), ``fp16_scaler`` (fp16 runs only), and beyond the reference: ``config`` (plain
data, instead of an ``argparse.Namespace``), ``step_in_epoch`` (batches of ``epoch`` already done, for
mid-epoch resume), ``global_step``, ``epoch_stats`` and ``rng_states`` (one entry per rank, tensors and
numbers only).

DenseCL runs (``run.method=densecl``, SPEC §23) write ``state_dict`` (the :class:`dino.train.densecl.DenseCL`
model in the reference's training layout: ``encoder_q.0.*``, ``encoder_q.1.*``, ``encoder_k.*``, ``backbone.*``,
``queue``, ``queue_ptr``, ``queue2``, ``queue2_ptr``) and ``method: "densecl"`` instead of ``student``, ``teacher``
and ``dino_loss``; the other keys are the same.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dino.checkpoint import atomic_torch_save, load_checkpoint_file

__all__ = ["capture_rng_state", "load_training_checkpoint", "restore_rng_state", "save_training_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pth"


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python `random` states as tensors and numbers."""
    numpy_state = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {
            "version": python_version,
            "internal": torch.tensor(python_internal, dtype=torch.int64),
            "gauss_next": python_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(state: dict[str, Any], output_dir: str | os.PathLike[str], epoch_copy: int | None) -> Path:
    """Write ``checkpoint.pth`` atomically (the previous one stays intact until the new one is complete),
    plus ``checkpoint{epoch:04}.pth`` when `epoch_copy` is given."""
    output_dir = Path(output_dir)
    path = output_dir / CHECKPOINT_NAME
    atomic_torch_save(state, path)
    if epoch_copy is not None:
        atomic_torch_save(state, output_dir / f"checkpoint{epoch_copy:04}.pth")
    return path


def load_training_checkpoint(path: str | os.PathLike[str], method: str = "dino") -> dict[str, Any]:
    """Load a training checkpoint of `method` (``dino`` or ``densecl``) with ``weights_only=True``.

    Raises:
        ValueError: The file is not a full training checkpoint, or one of the other method.
    """
    checkpoint = load_checkpoint_file(path, weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a full training checkpoint (a {type(checkpoint).__name__}, not a dict)")
    saved_method = checkpoint.get("method", "densecl" if "state_dict" in checkpoint else "dino")
    if saved_method != method:
        raise ValueError(
            f"{path}: a {saved_method} training checkpoint cannot resume a {method} run; set run.method={saved_method} "
            "or start a new run in another --output-dir"
        )
    needed = ("state_dict",) if method == "densecl" else ("student", "teacher")
    if not all(key in checkpoint for key in needed):
        raise ValueError(
            f"{path}: not a full training checkpoint (needs {' and '.join(map(repr, needed))}; a backbone-only file "
            "cannot resume training, SPEC §7)"
        )
    return checkpoint
