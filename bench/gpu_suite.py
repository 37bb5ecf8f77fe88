"""One-command GPU benchmark: backbone images/s (bf16, SDPA, eager and torch.compile), DAVIS ViT-S/8 480p
propagation frames/s and `dino train` images/s, in one JSON file, within a time budget (default 270 s).

    python bench/gpu_suite.py --out gpu_suite.json                        # a GPU: under 5 minutes
    python bench/gpu_suite.py --device cpu --quick --out /tmp/quick.json  # every section at tiny sizes, seconds

Sections, each in a process of its own (a crash, a hung compile or a poisoned CUDA context loses that section
only, and a section past its share of the budget is killed with what it had measured kept):

- ``vit``: ``forward_features`` of ViT-S/16 and ViT-S/8 at 224² (batch ``--batch-size``), ViT-S/8 at 480×832
  (the DAVIS input; batch ``--batch-size // 16``), a fp32 row, and ``FeatureExtractor.forward`` (host copies in
  and out included), under ``dino.features.autocast_context``; images/s after warm-up, synchronised.
- ``davis``: ``apps.video_seg.pipeline.segment_frames`` with a ViT-S/8 over 854×480 frames, synthetic or a real
  DAVIS sequence (``--davis``), decoded into memory first; frames/s once the context window is full, for the fp32
  backbone (the reference's, the CLI default), a bf16 backbone, and bf16 backbone and affinities; and the
  backbone alone.
- ``train``: `dino train` (dino.train.trainer.train) with the ViT-S/16 recipe (2×224² + 8×96² crops, batch 64 per
  GPU, bf16) on synthetic JPEGs; images/s over the steps after warm-up; then the same step on crops already on the
  device (what the GPU can do) and the data loader alone (what the CPUs can feed it).
- ``vit_compile``: the 224² rows again through ``torch.compile`` (compile time recorded); a failed compile is
  recorded and the rest goes on.

The JSON holds the environment (device, torch, CUDA, Python), the settings, and per section its status
(``ok``, ``error``, ``timeout``, ``skipped``), seconds, results and errors; it is rewritten after every section.
The exit status is 0 when every section ran whole, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The budget counts from here, before torch is imported: the whole command must fit in it.
PROCESS_START = time.perf_counter()
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from dino.atomic import atomic_write_json, remove_stale_temporaries  # noqa: E402

SECTIONS = ("vit", "davis", "train", "vit_compile")
# The most of the budget each section may take, so that a runaway one leaves time to the rest; the last
# section (compile, the slowest and the least certain) gets whatever is left.
BUDGET_SHARES = {"vit": 0.3, "davis": 0.25, "train": 0.35, "vit_compile": 1.0}
# A section is not started with less time than this left: it could not load its model and warm up.
MIN_SECTION_S = {False: 8.0, True: 1.0}
DAVIS_FRAME_SIZE = (480, 854)  # (height, width) of DAVIS 480p frames
LOG_TAIL_LINES = 25
Emit = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class ViTCase:
    """One throughput row: a backbone at one input size and batch, in one precision, through one entry point."""

    weights: str
    height: int
    width: int
    batch: int
    dtype: str
    entry: str = "forward_features"  # or "FeatureExtractor.forward"


@dataclass(frozen=True)
class Plan:
    """Every size the sections use, from the command line (``--quick`` shrinks them all)."""

    device: str
    dtype: str
    weights16: str
    weights8: str
    vit_cases: tuple[ViTCase, ...]
    compile_cases: tuple[ViTCase, ...]
    compile_backend: str
    compile_mode: str
    warmup_iters: int
    min_iters: int
    min_seconds: float
    davis_root: str | None
    davis_frame_size: tuple[int, int]
    davis_resize_real: bool
    davis_short_side: int
    davis_multiple: int
    davis_warmup_frames: int
    davis_timed_frames: int
    train_preset: str
    train_overrides: tuple[str, ...]
    train_batch: int
    train_warmup_steps: int
    train_timed_steps: int
    train_workers: int | None
    train_image_size: tuple[int, int]


def _auto_davis_root() -> str | None:
    """A DAVIS-layout folder from ``$DINO_DATA_DIR`` or ``../shared/data`` beside the repository, if there."""
    data = Path(os.environ.get("DINO_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    for root in (data / "davis2016-dev", data):
        if (root / "JPEGImages" / "480p").is_dir() and (root / "Annotations" / "480p").is_dir():
            return str(root)
    return None


def make_plan(args: argparse.Namespace) -> Plan:
    """The sizes of a full run (a GPU) or, with ``--quick``, tiny ones that run on a CPU in seconds."""
    quick = args.quick
    w16 = args.weights_16 or ("random:vit_tiny/16" if quick else "random:vit_small/16")
    w8 = args.weights_8 or ("random:vit_tiny/8" if quick else "random:vit_small/8")
    batch = args.batch_size or (2 if quick else 256)
    side = 32 if quick else 224
    tall, wide = (48, 80) if quick else (480, 832)  # the DAVIS input: 854×480 resized to 832×480
    vit_cases = (
        ViTCase(w16, side, side, batch, args.dtype),
        ViTCase(w16, side, side, batch, "fp32"),
        ViTCase(w16, side, side, batch, args.dtype, "FeatureExtractor.forward"),
        ViTCase(w8, side, side, batch, args.dtype),
        ViTCase(w8, tall, wide, max(1, batch // 16), args.dtype),
    )
    compile_cases = (ViTCase(w16, side, side, batch, args.dtype), ViTCase(w8, side, side, batch, args.dtype))
    if args.davis == "auto":
        davis_root = None if quick else _auto_davis_root()
    else:
        davis_root = None if args.davis == "synthetic" else args.davis
    train_overrides: tuple[str, ...] = ()
    if quick:  # the recipe's structure (multi-crop, head, EMA teacher, AdamW) at toy sizes
        train_overrides = (
            "model.arch=vit_tiny",
            "model.out_dim=128",
            "model.head_hidden_dim=64",
            "model.head_bottleneck_dim=32",
            "crops.global_crops_size=32",
            "crops.local_crops_size=16",
            "crops.local_crops_number=2",
        )
    return Plan(
        device=args.device,
        dtype=args.dtype,
        weights16=w16,
        weights8=w8,
        vit_cases=vit_cases,
        compile_cases=compile_cases,
        compile_backend=args.compile_backend or ("eager" if quick else "inductor"),
        compile_mode=args.compile_mode,
        warmup_iters=1 if quick else 3,
        min_iters=2 if quick else 5,
        min_seconds=0.0 if quick else 2.0,
        davis_root=davis_root,
        davis_frame_size=(72, 128) if quick else DAVIS_FRAME_SIZE,
        davis_resize_real=quick,
        davis_short_side=48 if quick else 480,
        davis_multiple=16 if quick else 64,
        davis_warmup_frames=2 if quick else 9,
        davis_timed_frames=3 if quick else 40,
        train_preset="vit_small16",
        train_overrides=train_overrides,
        train_batch=args.train_batch_size or (2 if quick else 64),
        train_warmup_steps=1 if quick else 5,
        train_timed_steps=2 if quick else 15,
        train_workers=0 if quick and args.train_workers is None else args.train_workers,
        train_image_size=(40, 48) if quick else (375, 500),
    )


# ---------------------------------------------------------------------------- timing helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since :func:`reset_peak`; None off CUDA (RSS would mix in the interpreter)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def time_calls(call: Callable[[], Any], device: torch.device, plan: Plan) -> tuple[int, float]:
    """(iterations, seconds) of `call` after `plan.warmup_iters` warm-up calls, synchronised at both ends.

    One timed call sets how many to run: at least `plan.min_iters` and about `plan.min_seconds` in all.
    """
    for _ in range(plan.warmup_iters):
        call()
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    one = time.perf_counter() - start
    iters = min(max(plan.min_iters, math.ceil(plan.min_seconds / max(one, 1e-6))), 2000)
    start = time.perf_counter()
    for _ in range(iters):
        call()
    synchronize(device)
    return iters, time.perf_counter() - start


def _model_name(model: Any) -> str:
    """The model's name, ViT-small/16 and the like, from the width (the one thing that tells the variants apart)."""
    from dino.models.architectures import ARCHITECTURES

    arch = next((name for name, cfg in ARCHITECTURES.items() if cfg["embed_dim"] == model.embed_dim), "vit_?")
    return f"{arch.replace('vit_', 'ViT-')}/{model.patch_size}"


def _error_record(label: str, error: BaseException) -> dict[str, Any]:
    return {"label": label, "error": _one_line(error), "traceback": traceback.format_exc(limit=-8)}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"


# ---------------------------------------------------------------------------- sections
def section_vit(plan: Plan, emit: Emit, compiled: bool = False) -> None:
    """Images/s of each backbone case (eager, or through torch.compile); a failing case is recorded and skipped."""
    from dino.checkpoint import load_backbone
    from dino.runtime import pick_device

    device = pick_device(plan.device)
    models: dict[str, Any] = {}
    for case in plan.compile_cases if compiled else plan.vit_cases:
        label = f"{case.weights} {case.height}x{case.width} b{case.batch} {case.dtype} {case.entry}"
        try:
            if case.weights not in models:
                models[case.weights] = load_backbone(case.weights).eval().to(device)
            emit({"label": label} | _vit_case(models[case.weights], case, device, plan, compiled))
        except Exception as error:  # recorded; the other cases still run
            emit(_error_record(label, error))
            if device.type == "cuda":
                torch.cuda.empty_cache()
                if not _cuda_usable(device):
                    raise RuntimeError("the CUDA context is unusable after this error; the section stops") from error


def _vit_case(model: Any, case: ViTCase, device: torch.device, plan: Plan, compiled: bool) -> dict[str, Any]:
    """One throughput row: random normalised-range images already on the device (on the host for the extractor,
    whose forward copies them in and its features out, as it does in use)."""
    from dino.features import FeatureExtractor
    from dino.runtime import Runtime, autocast_context, autocast_dtype

    record: dict[str, Any] = {
        "model": _model_name(model),
        "weights": case.weights,
        "input": f"{case.height}x{case.width}",
        "tokens": 1 + (case.height // model.patch_size) * (case.width // model.patch_size),
        "batch": case.batch,
        "dtype": case.dtype,
        "attention": "sdpa",
        "entry": case.entry,
        "mode": "compiled" if compiled else "eager",
    }
    reset_peak(device)
    if case.entry == "FeatureExtractor.forward":
        extractor = FeatureExtractor(
            model, runtime=Runtime(device=str(device), dtype=case.dtype, batch_size=case.batch)
        )
        host_images = torch.randn(case.batch, 3, case.height, case.width)

        def call() -> Any:
            return extractor.forward(host_images)

    else:
        images = torch.randn(case.batch, 3, case.height, case.width, device=device)
        dtype = autocast_dtype(device, case.dtype)
        forward = model.forward_features
        if compiled:
            torch._dynamo.reset()
            forward = torch.compile(forward, backend=plan.compile_backend, mode=plan.compile_mode)
            record |= {"compile_backend": plan.compile_backend, "compile_mode": plan.compile_mode}

        def call() -> Any:
            with torch.no_grad(), autocast_context(device, dtype):
                return forward(images)

        if compiled:  # the first call compiles: timed on its own
            start = time.perf_counter()
            call()
            synchronize(device)
            record["compile_s"] = round(time.perf_counter() - start, 2)
    iters, seconds = time_calls(call, device, plan)
    return record | {
        "iters": iters,
        "seconds": round(seconds, 3),
        "ms_per_batch": round(1000 * seconds / iters, 3),
        "images_per_s": case.batch * iters / seconds,
        "peak_mib": peak_mib(device),
    }


def _cuda_usable(device: torch.device) -> bool:
    try:
        torch.zeros(1, device=device).add_(1)
        synchronize(device)
        return True
    except Exception:
        return False


def section_vit_compile(plan: Plan, emit: Emit) -> None:
    section_vit(plan, emit, compiled=True)


def _synthetic_video(height: int, width: int, count: int) -> tuple[list[Any], Any]:
    """`count` BGR frames of a smooth random scene panning sideways, and a first-frame map of two objects."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    scene = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    frames = [np.ascontiguousarray(np.roll(scene, 3 * index, axis=1)) for index in range(count)]
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[height // 4 : height // 2, width // 5 : width // 2] = 1
    labels[height // 2 : 3 * height // 4, width // 2 : 4 * width // 5] = 2
    return frames, labels


def _davis_video(root: str, count: int, size: tuple[int, int] | None) -> tuple[list[Any], Any, str]:
    """The first `count` frames of the first listed sequence (resized to `size` for --quick), its first mask."""
    import cv2

    from apps.video_seg.davis import read_bgr_frames
    from dino.data.davis import davis_annotations, davis_frames, davis_sequences
    from dino.data.masks import read_indexed_png

    sequence = davis_sequences(root)[0]
    frames = list(read_bgr_frames(davis_frames(root, sequence)[:count]))
    labels = read_indexed_png(davis_annotations(root, sequence)[0])
    if size is not None:
        frames = [cv2.resize(frame, size[::-1], interpolation=cv2.INTER_AREA) for frame in frames]
        labels = cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST)
    return frames, labels, f"DAVIS {Path(root).name}/{sequence}"


def section_davis(plan: Plan, emit: Emit) -> None:
    """Frames/s of segment_frames once the context window is full (frames already decoded), and the backbone alone."""
    import numpy as np

    from apps.video_seg.pipeline import patch_features, segment_frames
    from apps.video_seg.preprocess import FramePreprocessing, bgr_to_tensor, target_size
    from apps.video_seg.propagation import PropagationConfig
    from dino.checkpoint import load_backbone
    from dino.runtime import autocast_dtype, pick_device

    device = pick_device(plan.device)
    model = load_backbone(plan.weights8).eval().to(device)
    count = 1 + plan.davis_warmup_frames + plan.davis_timed_frames
    if plan.davis_root is not None:
        resize = plan.davis_frame_size if plan.davis_resize_real else None
        frames, labels, source = _davis_video(plan.davis_root, count, resize)
    else:
        frames, labels = _synthetic_video(*plan.davis_frame_size, count)
        source = "synthetic"
    timed = len(frames) - 1 - plan.davis_warmup_frames
    if timed < 1:
        raise ValueError(f"{source}: {len(frames)} frames, fewer than the {plan.davis_warmup_frames + 2} needed")
    height, width = frames[0].shape[:2]
    preprocessing = FramePreprocessing(short_side=plan.davis_short_side, multiple=plan.davis_multiple)
    preprocessing = preprocessing.for_patch(model.patch_size)
    resized = target_size(height, width, preprocessing.short_side, preprocessing.multiple)
    common = {
        "model": _model_name(model),
        "weights": plan.weights8,
        "frames": source,
        "frame_size": f"{width}x{height}",
        "input": f"{resized[0]}x{resized[1]}",
        "patch_tokens": (resized[0] // model.patch_size) * (resized[1] // model.patch_size),
        "objects": int(np.unique(labels[labels > 0]).size),
    }
    runs = (("fp32", "fp32"), (plan.dtype, "fp32"), (plan.dtype, plan.dtype))
    for backbone_dtype, affinity_dtype in dict.fromkeys(runs):
        label = f"segment_frames backbone {backbone_dtype} affinity {affinity_dtype}"
        try:
            config = PropagationConfig(affinity_dtype=affinity_dtype)
            reset_peak(device)
            stamps = []
            outputs = segment_frames(
                frames, labels, model, config, preprocessing, device, autocast_dtype(device, backbone_dtype)
            )
            for _ in outputs:  # each label map is on the host: the frame's work is done
                stamps.append(time.perf_counter())
            seconds = stamps[-1] - stamps[plan.davis_warmup_frames - 1]
            emit(
                common
                | {
                    "label": label,
                    "measure": "segment_frames: backbone + propagation (frames decoded beforehand, no masks written)",
                    "backbone_dtype": backbone_dtype,
                    "affinity_dtype": affinity_dtype,
                    "context_frames": 1 + config.n_last_frames,
                    "warmup_frames": plan.davis_warmup_frames,
                    "timed_frames": timed,
                    "seconds": round(seconds, 3),
                    "frames_per_s": timed / seconds,
                    "peak_mib": peak_mib(device),
                }
            )
        except Exception as error:
            emit(_error_record(label, error))
    first = bgr_to_tensor(frames[0], preprocessing).to(device)
    for backbone_dtype in dict.fromkeys(("fp32", plan.dtype)):
        label = f"patch_features alone {backbone_dtype}"
        try:
            iters, seconds = time_calls(
                functools.partial(patch_features, model, first, autocast_dtype(device, backbone_dtype)), device, plan
            )
            emit(
                common
                | {
                    "label": label,
                    "measure": "backbone alone (patch_features, batch 1)",
                    "backbone_dtype": backbone_dtype,
                    "iters": iters,
                    "frames_per_s": iters / seconds,
                }
            )
        except Exception as error:
            emit(_error_record(label, error))


def _write_training_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    """`count` JPEGs of `size` (height, width): 16 smooth random pictures, their bytes repeated under new names
    (every name decodes and is cropped on its own, which is what the loader's cost depends on)."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    encoded = []
    for _ in range(16):
        coarse = rng.integers(0, 256, (max(2, size[0] // 16), max(2, size[1] // 16), 3), dtype=np.uint8)
        picture = cv2.resize(coarse, size[::-1], interpolation=cv2.INTER_CUBIC)
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for index in range(count):
        (folder / f"{index:05d}.jpg").write_bytes(encoded[index % len(encoded)])


def _loader_workers(config: Any) -> tuple[int, str]:
    """Loader workers for the training run: the usable CPUs less two (the main process and the pinning thread), at
    most 14, and no more than half of /dev/shm holds at two prefetched batches each (containers often give 64 MiB,
    where workers die of a bus error)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(cpus - 2, 14))
    crops = config.crops
    pixels = 2 * crops.global_crops_size**2 + crops.local_crops_number * crops.local_crops_size**2
    batch_bytes = 3 * 4 * pixels * config.optim.batch_size_per_gpu
    if not os.path.isdir("/dev/shm"):
        return workers, f"{cpus} usable CPUs"
    fit = int(0.5 * shutil.disk_usage("/dev/shm").total // (2 * batch_bytes))
    if fit < workers:
        return fit, f"{cpus} usable CPUs, /dev/shm holds {fit} workers' prefetched batches"
    return workers, f"{cpus} usable CPUs"


def _train_steps(plan: Plan, workers: int) -> tuple[int, int]:
    """(warm-up, timed) steps. The workers start together and deliver their first batches together: the warm-up
    takes that first round and the timing three more, so that a burst of prefetched batches cannot pass for speed."""
    if workers == 0:
        return plan.train_warmup_steps, plan.train_timed_steps
    return max(plan.train_warmup_steps, workers), max(plan.train_timed_steps, 3 * workers)


def section_train(plan: Plan, emit: Emit) -> None:
    """Images/s of `dino train` over the steps after warm-up; then its step alone on crops already on the device
    (what the accelerator can do) and its data loader alone (what the CPUs can feed)."""
    from dino.runtime import pick_device

    device = pick_device(plan.device)
    base = _train_config(plan, device, Path("."), Path("."), 0, 1)
    if plan.train_workers is None:
        workers, reason = _loader_workers(base)
    else:
        workers, reason = plan.train_workers, "fixed (--train-workers, or 0 with --quick)"
    with tempfile.TemporaryDirectory(prefix="gpu_suite_train_") as tmp:
        images = Path(tmp) / "images"
        # One epoch holds every training step (an epoch end would add a checkpoint and a loader restart to a step)
        # and the loader's four rounds of batches (see _loader_run).
        batches = max(sum(_train_steps(plan, workers)) + 1, 4 * workers + 1, 9)
        _write_training_images(images, plan.train_batch * batches, plan.train_image_size)
        try:
            record = _train_run(plan, device, images, Path(tmp) / "run", workers)
            emit(record | {"loader_workers_from": reason})
        except Exception as error:
            if workers == 0:
                raise
            # Loader workers can die (shared memory, forking); the steps are still worth measuring without them.
            emit(_error_record(f"dino train, {workers} loader workers", error))
            workers = 0
            record = _train_run(plan, device, images, Path(tmp) / "run0", 0)
            emit(record | {"loader_workers_from": "fallback after the error above"})
        for label, measure in (
            ("train step alone", lambda: _step_run(base, device, plan)),
            ("data loader alone", lambda: _loader_run(base, images, workers)),
        ):
            try:
                emit(measure())
            except Exception as error:
                emit(_error_record(label, error))


def _train_config(plan: Plan, device: torch.device, images: Path, out: Path, workers: int, steps: int) -> Any:
    """The recipe (plan.train_preset, plus --quick's toy sizes) with the run settings of a short timed run."""
    overrides = [
        f"run.device={device}",
        f"run.precision={plan.dtype}",
        f"run.num_workers={workers}",
        "run.progress=false",
        f"run.max_steps={steps}",
        f"run.output_dir={out}",
        "run.log_every=1",
        f"optim.batch_size_per_gpu={plan.train_batch}",
        *plan.train_overrides,
    ]
    from dino.train.config import load_config

    config = load_config(plan.train_preset, overrides=overrides)
    config.run.data_path = [str(images)]
    return config


def _train_run(plan: Plan, device: torch.device, images: Path, out: Path, workers: int) -> dict[str, Any]:
    """One short `dino train` run; images/s over the steps after the warm-up ones."""
    from dino.train.trainer import train

    warmup, timed_steps = _train_steps(plan, workers)
    config = _train_config(plan, device, images, out, workers, warmup + timed_steps)
    reset_peak(device)
    result = train(config, resume=False)
    timed = result.history[warmup:]
    if not timed:
        raise RuntimeError(f"the run stopped after {len(result.history)} steps, before any timed step")
    batch = config.optim.batch_size_per_gpu
    # Each record's images/s is the batch over the time since the previous step ended (loader wait included).
    seconds = sum(batch / record["images_per_s"] for record in timed)
    crops = config.crops
    return {
        "label": f"dino train {config.model.arch}/{config.model.patch_size} b{batch} {plan.dtype}",
        "measure": "dino.train.trainer.train (loader, student + teacher, loss, backward, AdamW, EMA)",
        "preset": plan.train_preset,
        "overrides": list(plan.train_overrides),
        "arch": f"{config.model.arch}/{config.model.patch_size}",
        "out_dim": config.model.out_dim,
        "crops": f"2x{crops.global_crops_size}^2 + {crops.local_crops_number}x{crops.local_crops_size}^2",
        "batch": batch,
        "precision": plan.dtype,
        "loader_workers": workers,
        "warmup_steps": warmup,
        "timed_steps": len(timed),
        "ms_per_step": round(1000 * seconds / len(timed), 2),
        "images_per_s": batch * len(timed) / seconds,
        "median_step_images_per_s": statistics.median(record["images_per_s"] for record in timed),
        "final_loss": timed[-1]["loss"],
        "peak_mib": peak_mib(device),
    }


def _step_run(config: Any, device: torch.device, plan: Plan) -> dict[str, Any]:
    """The training step of dino.train.trainer.train on random crops already on the device, no loader: the teacher
    on the global crops, the student on all, the DINO loss, backward, per-parameter clipping, the frozen last layer
    of epoch 0, AdamW and the EMA teacher; the lr held at its peak, weight decay and teacher momentum at their
    starting values (and fp16 without its GradScaler, which costs little)."""
    from dino.runtime import autocast_context, autocast_dtype
    from dino.train.loss import DINOLoss
    from dino.train.optim import (
        build_optimizer,
        cancel_gradients_last_layer,
        clip_gradients,
        clip_gradients_global,
        get_params_groups,
    )
    from dino.train.trainer import LR_REFERENCE_BATCH, build_networks

    crops_cfg, optim_cfg, loss_cfg = config.crops, config.optim, config.loss
    batch = optim_cfg.batch_size_per_gpu
    student, teacher = (network.to(device) for network in build_networks(config))
    ncrops = 2 + crops_cfg.local_crops_number
    dino_loss = DINOLoss(
        config.model.out_dim,
        ncrops,
        loss_cfg.warmup_teacher_temp,
        loss_cfg.teacher_temp,
        loss_cfg.warmup_teacher_temp_epochs,
        optim_cfg.epochs,
        loss_cfg.student_temp,
        loss_cfg.center_momentum,
    ).to(device)
    optimizer = build_optimizer(get_params_groups(student), optim_cfg.optimizer)
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = optim_cfg.lr * batch / LR_REFERENCE_BATCH
        if index == 0:
            group["weight_decay"] = optim_cfg.weight_decay
    sizes = [crops_cfg.global_crops_size] * 2 + [crops_cfg.local_crops_size] * crops_cfg.local_crops_number
    crops = [torch.randn(batch, 3, size, size, device=device) for size in sizes]
    dtype = autocast_dtype(device, plan.dtype)
    momentum = optim_cfg.momentum_teacher

    def step() -> float:
        with autocast_context(device, dtype):
            with torch.no_grad():
                teacher_output = teacher(crops[:2])
            student_output = student(crops)
            loss = dino_loss(student_output, teacher_output, 0)
        optimizer.zero_grad()
        loss.backward()
        if optim_cfg.clip_grad:
            clip = clip_gradients_global if optim_cfg.clip_mode == "global" else clip_gradients
            clip(student, optim_cfg.clip_grad)
        cancel_gradients_last_layer(0, student, optim_cfg.freeze_last_layer)
        optimizer.step()
        with torch.no_grad():
            for param_q, param_k in zip(student.parameters(), teacher.parameters(), strict=True):
                param_k.data.mul_(momentum).add_((1 - momentum) * param_q.detach().data)
        return loss.item()  # the trainer reads the loss every step

    reset_peak(device)
    iters, seconds = time_calls(step, device, plan)
    return {
        "label": f"train step alone {config.model.arch}/{config.model.patch_size} b{batch} {plan.dtype}",
        "measure": "the trainer's step on random crops already on the device (no loader)",
        "crops": " + ".join(f"{sizes.count(size)}x{size}^2" for size in dict.fromkeys(sizes)),
        "batch": batch,
        "precision": plan.dtype,
        "iters": iters,
        "ms_per_step": round(1000 * seconds / iters, 2),
        "images_per_s": batch * iters / seconds,
        "peak_mib": peak_mib(device),
    }


def _loader_run(config: Any, images: Path, workers: int) -> dict[str, Any]:
    """The trainer's data pipeline alone (decode + multi-crop augmentation), as the trainer builds it, timed from the
    end of the workers' first round (they start together) over three more rounds (at least 8 batches)."""
    from torch.utils.data import DataLoader

    from dino.data.multicrop import DataAugmentationDINO, MultiCropDataset
    from dino.data.samplers import EpochBatchSampler

    crops = config.crops
    augmentation = DataAugmentationDINO(
        crops.global_crops_scale,
        crops.local_crops_scale,
        crops.local_crops_number,
        crops.global_crops_size,
        crops.local_crops_size,
    )
    batch = config.optim.batch_size_per_gpu
    dataset = MultiCropDataset([str(images)], augmentation, seed=0)
    sampler = EpochBatchSampler(len(dataset), batch, seed=0)
    sampler.set_epoch(0, 0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, generator=torch.Generator())
    first_round = max(workers, 1)
    wanted = first_round + max(3 * first_round, 8)
    stamps = []
    for _ in loader:
        stamps.append(time.perf_counter())
        if len(stamps) == wanted:
            break
    timed = len(stamps) - first_round
    if timed < 1:
        raise RuntimeError(f"{len(stamps)} batches: too few to time the loader past its first round")
    seconds = stamps[-1] - stamps[first_round - 1]
    return {
        "label": f"data loader alone b{batch}, {workers} workers",
        "measure": "DataLoader(MultiCropDataset) alone: JPEG decode + multi-crop augmentation",
        "loader_workers": workers,
        "batch": batch,
        "timed_batches": timed,
        "images_per_s": batch * timed / seconds,
    }


SECTION_FUNCTIONS: dict[str, Callable[[Plan, Emit], None]] = {
    "vit": section_vit,
    "davis": section_davis,
    "train": section_train,
    "vit_compile": section_vit_compile,
}


def run_section(name: str, plan: Plan, records: Path) -> int:
    """A section in this (child) process: one JSON line per measurement, flushed as it is made."""
    with open(records, "a") as handle:

        def emit(record: dict[str, Any]) -> None:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()

        try:
            SECTION_FUNCTIONS[name](plan, emit)
        except Exception as error:
            emit({"section_error": _one_line(error), "traceback": traceback.format_exc(limit=-8)})
            return 1
    return 0


# ---------------------------------------------------------------------------- the parent
def environment(device_name: str) -> dict[str, Any]:
    """What the numbers depend on: device, driver, torch/CUDA/cuDNN, SDPA back ends, Python, CPUs, compiler."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        # "highest" (torch's default): fp32 matmuls do not use TF32, which the fp32 rows depend on
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "c_compiler": shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc"),  # Triton and Inductor need one
        "git_commit": _git_commit(),
    }
    if os.path.isdir("/dev/shm"):
        info["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)  # DataLoader workers use it
    info["packages"] = _package_versions()
    device = torch.device(device_name)
    info["device"] = device_name
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": properties.name,
            "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
            "compute_capability": f"{properties.major}.{properties.minor}",
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(),
            "sdpa_mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "driver": _nvidia_smi("driver_version"),
        }
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def _package_versions() -> dict[str, str | None]:
    """The versions of what the sections import (None: missing), so that a machine without one is seen at once."""
    import importlib

    versions: dict[str, str | None] = {}
    for name in ("torchvision", "numpy", "PIL", "tqdm", "yaml", "cv2", "triton"):
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "installed"))
        except Exception:  # ImportError, or a broken install that fails in its own import
            versions[name] = None
    return versions


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _nvidia_smi(field: str) -> str | None:
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut by the kill
                continue
    return records


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the section's process group (its loader and compile workers too), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_child(name: str, argv: list[str], timeout: float, folder: Path, threads: int) -> dict[str, Any]:
    """Run one section in a process of its own; its result, or what it had measured when it failed or ran out."""
    records, log = folder / f"{name}.jsonl", folder / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--section", name, "--records", str(records)]
    # Set before the child imports torch, so that OpenMP starts with that many threads.
    env = os.environ | {"OMP_NUM_THREADS": str(threads)} if threads else None
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            returncode = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(process)
            returncode, timed_out = process.returncode, True
        except BaseException:  # Ctrl-C: take the section down with us
            _kill_group(process)
            raise
    seconds = time.perf_counter() - start
    lines = _read_records(records)
    results = [line for line in lines if "section_error" not in line and "error" not in line]
    errors = [line for line in lines if "error" in line or "section_error" in line]
    section: dict[str, Any] = {"seconds": round(seconds, 1), "results": results, "errors": errors}
    if timed_out:
        section |= {"status": "timeout", "error": f"killed after {seconds:.0f} s, its share of the time budget"}
    elif returncode != 0:
        message = next((line["section_error"] for line in errors if "section_error" in line), None)
        section |= {"status": "error", "error": message or f"exit status {returncode}"}
    elif errors or not results:
        section |= {"status": "error", "error": errors[0]["error"] if errors else "no result recorded"}
    else:
        section["status"] = "ok"
    if section["status"] != "ok":
        section["log_tail"] = _tail(log)
    return section


def _threads(args: argparse.Namespace, device: torch.device) -> int:
    """CPU threads of the sections (0: torch's default). Tiny CPU runs get one: on a busy machine the OpenMP
    threads of a 2-image batch spin against each other and run a hundred times slower than one thread."""
    if args.threads is not None:
        return args.threads
    return 1 if args.quick and device.type == "cpu" else 0


def _parent_device(preference: str) -> torch.device:
    """dino.features.pick_device; torch's own view if the core cannot be imported here (a package missing), so that
    the environment is still recorded and each section says what it lacks."""
    try:
        from dino.runtime import pick_device
    except ImportError:
        if preference != "auto":
            return torch.device(preference)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return pick_device(preference)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_suite(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    started = PROCESS_START
    # A SIGTERM (a runner's time limit) ends the suite the way Ctrl-C does: the running section's process group is
    # killed with it (the sections run in sessions of their own, which a signal to this process does not reach).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)
    device = _parent_device(args.device)
    plan = make_plan(args)
    threads = _threads(args, device)
    report: dict[str, Any] = {
        "suite": "bench/gpu_suite.py",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *argv],
        "quick": args.quick,
        "budget_s": args.budget,
        "environment": environment(str(device)),
        "settings": dataclasses.asdict(plan) | {"device": str(device), "cpu_threads": threads or "torch's default"},
        "sections": {},
    }
    atomic_write_json(out, report)
    # The children resolve the same device (pick_device("auto") picks CUDA first), so they get it spelled out.
    child_argv = [*argv, "--device", str(device)]
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        for name in args.sections:
            left = args.budget - (time.perf_counter() - started)
            if left < MIN_SECTION_S[args.quick]:
                report["sections"][name] = {
                    "status": "skipped",
                    "error": f"time budget spent ({left:.0f} s of {args.budget:.0f} s left)",
                    "results": [],
                }
            else:
                timeout = min(left, BUDGET_SHARES[name] * args.budget) if name != args.sections[-1] else left
                print(f"[{name}] running (at most {timeout:.0f} s)", file=sys.stderr, flush=True)
                report["sections"][name] = run_child(name, child_argv, timeout, Path(tmp), threads)
                print(f"[{name}] {report['sections'][name]['status']}", file=sys.stderr, flush=True)
            report["elapsed_s"] = round(time.perf_counter() - started, 1)
            atomic_write_json(out, report)
    return report


def _format_value(record: dict[str, Any]) -> str:
    for key, unit in (("images_per_s", "images/s"), ("frames_per_s", "frames/s")):
        if key in record and isinstance(record[key], (int, float)):
            return f"{record[key]:10.1f} {unit}"
    return ""


def print_table(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"\n{env.get('gpu') or env.get('cpu') or env['device']}, torch {env['torch']}, CUDA {env['cuda_runtime']}")
    for name, section in report["sections"].items():
        print(f"\n{name}: {section['status']} ({section.get('seconds', 0):.0f} s)")
        for record in section["results"]:
            extra = ""
            if "compile_s" in record:
                extra = f"  (compile {record['compile_s']:.1f} s)"
            if "peak_mib" in record and record["peak_mib"] is not None:
                extra += f"  peak {record['peak_mib']:.0f} MiB"
            print(f"  {record['label']:<70} {_format_value(record)}{extra}")
        for record in section.get("errors", []):
            print(f"  {record.get('label', name):<70} failed: {record.get('error') or record.get('section_error')}")
        if section["status"] in ("timeout", "skipped"):
            print(f"  {section['error']}")
    speedups = _compile_speedups(report)
    if speedups:
        print("\ntorch.compile speed-up over eager:")
        for label, ratio in speedups.items():
            print(f"  {label:<70} {ratio:10.2f}x")


def _compile_speedups(report: dict[str, Any]) -> dict[str, float]:
    """Compiled images/s over eager images/s of the same case."""
    sections = report["sections"]
    key = ("weights", "input", "batch", "dtype", "entry")
    eager = {tuple(r.get(k) for k in key): r for r in sections.get("vit", {}).get("results", [])}
    ratios = {}
    for record in sections.get("vit_compile", {}).get("results", []):
        match = eager.get(tuple(record.get(k) for k in key))
        if match:
            ratios[record["label"]] = record["images_per_s"] / match["images_per_s"]
    return ratios


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON results file (rewritten after every section)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, cpu …")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every section in seconds on a CPU")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for it all (default: %(default)s)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, help="ViT batch at 224² (default 256; 480×832 uses a 16th)")
    parser.add_argument("--weights-16", help="the patch-16 backbone (default random:vit_small/16)")
    parser.add_argument("--weights-8", help="the patch-8 backbone, also DAVIS's (default random:vit_small/8)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor; eager with --quick)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default: %(default)s)")
    parser.add_argument(
        "--davis",
        default="auto",
        help="DAVIS-layout folder, 'synthetic', or auto: $DINO_DATA_DIR/davis2016-dev or ../shared/data/davis2016-dev "
        "when present, else synthetic 854x480 frames (--quick: synthetic)",
    )
    parser.add_argument("--train-batch-size", type=int, help="dino train batch (default 64, the recipe's per GPU)")
    parser.add_argument(
        "--train-workers",
        type=int,
        help="dino train loader workers (default: CPUs - 2, at most 14, fewer if /dev/shm is small)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads per section (default: torch's; 1 with --quick)")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # a child process's one section
    parser.add_argument("--records", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "train_batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.threads is not None and args.threads < 0:
        parser.error(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    if args.train_workers is not None and args.train_workers < 0:
        parser.error(f"--train-workers must be 0 or more, got {args.train_workers}")
    if args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.section:
        if os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        return run_section(args.section, make_plan(args), Path(args.records))
    try:
        report = run_suite(args, argv)
    except ValueError as error:  # a device this machine does not have, and the like
        print(f"gpu_suite: error: {error}", file=sys.stderr)
        return 2
    print_table(report)
    print(f"\n{args.out} ({report.get('elapsed_s', 0):.0f} s)")
    return 0 if all(section["status"] == "ok" for section in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
