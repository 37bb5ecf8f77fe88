"""Propagation over a DAVIS-2017-layout dataset: ``<out>/<sequence>/<frame>.png`` indexed PNGs (SPEC §11).

Runs are resumable: ``<out>/video_seg.json`` records the settings and, after each sequence, its frame count
and speed. Re-running with the same settings skips finished sequences; a non-empty folder that is not
such a run (or a run with other settings) is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from apps.video_seg.pipeline import segment_frames
from apps.video_seg.preprocess import FramePreprocessing, read_bgr
from apps.video_seg.propagation import PropagationConfig
from dino.atomic import atomic_write_json
from dino.checkpoint import state_dict_sha256, weights_provenance
from dino.data.masks import davis_annotations, davis_frames, davis_sequences, read_indexed_png, write_indexed_png
from dino.models.vision_transformer import VisionTransformer

__all__ = ["MANIFEST_NAME", "SequenceResult", "read_bgr_frames", "segment_davis"]

MANIFEST_NAME = "video_seg.json"


@dataclass
class SequenceResult:
    """One propagated sequence: its name, frames written (the copied first frame included) and speed."""

    name: str
    frames: int
    seconds: float
    skipped: bool = False

    @property
    def frames_per_second(self) -> float:
        """Propagated (non-first) frames per second of wall time, backbone included."""
        return (self.frames - 1) / self.seconds if self.seconds > 0 else float("nan")


def read_bgr_frames(paths: Sequence[Path]) -> Iterator[np.ndarray]:
    """Decode image files with OpenCV (BGR, as the reference), one at a time."""
    for path in paths:
        yield read_bgr(path)


def _settings(model: VisionTransformer, config: PropagationConfig, preprocessing: FramePreprocessing, autocast) -> dict:
    return {
        "weights": str(getattr(model, "weights_source", "")),
        "weights_provenance": weights_provenance(str(getattr(model, "weights_source", ""))),
        "backbone_sha256": state_dict_sha256(model),
        "patch_size": model.patch_size,
        "embed_dim": model.embed_dim,
        "propagation": dataclasses.asdict(config) | {"max_affinity_mb": None},  # memory does not change results
        "preprocessing": dataclasses.asdict(preprocessing.for_patch(model.patch_size)),
        "backbone_autocast": str(autocast) if autocast is not None else "fp32",
    }


def _prepare_output(out: Path, settings: dict, overwrite: bool) -> dict:
    """The manifest to continue from; refuses a non-empty folder that is not a compatible run."""
    manifest_path = out / MANIFEST_NAME
    if overwrite or not out.exists() or not any(out.iterdir()):
        return {"settings": settings, "sequences": {}}
    if not manifest_path.is_file():
        raise FileExistsError(
            f"{out}: folder is not empty and holds no {MANIFEST_NAME}; pass --overwrite to write there"
        )
    manifest = json.loads(manifest_path.read_text())
    if not _same_settings(manifest.get("settings", {}), settings):
        raise FileExistsError(
            f"{out}: holds a run with other settings ({manifest_path}); pass --overwrite or choose another folder"
        )
    return manifest


def _same_settings(stored: dict, current: dict) -> bool:
    """Whether a recorded run used these settings. The weights are compared by checksum, since one file can be
    named by different paths; runs recorded before the checksum was, by the path resolved from here."""
    stored, current = dict(stored), dict(current)
    # How the weights are named (and so described) does not change the run; manifests before it had no provenance.
    stored.pop("weights_provenance", None), current.pop("weights_provenance", None)
    stored_weights, current_weights = stored.pop("weights", ""), current.pop("weights")
    if "backbone_sha256" not in stored:
        current.pop("backbone_sha256")
        if current_weights not in (stored_weights, os.path.abspath(stored_weights)):
            return False
    return stored == current


def _finished(out: Path, name: str, frames: Sequence[Path], manifest: dict) -> bool:
    return name in manifest["sequences"] and all((out / name / f"{frame.stem}.png").is_file() for frame in frames)


def segment_davis(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: VisionTransformer,
    sequences: Sequence[str] | None = None,
    config: PropagationConfig = PropagationConfig(),
    preprocessing: FramePreprocessing = FramePreprocessing(),
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[SequenceResult]:
    """Propagate each sequence's first annotation through its frames and write indexed PNGs.

    Args:
        root: DAVIS root (``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets/2017/val.txt``).
        out: Results folder; ``<out>/<sequence>/<frame>.png`` with the DAVIS palette.
        model: Backbone on `device`, in eval mode.
        sequences: Sequence names; default: those of ``ImageSets/2017/val.txt``.
        config: Propagation options.
        preprocessing: Frame resizing and normalisation.
        device: Where to compute.
        autocast: Backbone autocast dtype, or None for fp32.
        overwrite: Write into a non-empty folder that is not a compatible earlier run, recomputing all.
        progress: Show a progress bar per sequence.

    Returns:
        One :class:`SequenceResult` per sequence (``skipped`` for those finished by an earlier run).
    """
    root, out = Path(root), Path(out)
    names = list(sequences) if sequences else davis_sequences(root)
    # Every sequence's frames and first annotation are found before anything is written.
    inputs = {name: (davis_frames(root, name), davis_annotations(root, name)[0]) for name in names}
    manifest = _prepare_output(out, _settings(model, config, preprocessing, autocast), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST_NAME, manifest)
    results = []
    for index, name in enumerate(names, 1):
        frames, first_annotation = inputs[name]
        if _finished(out, name, frames, manifest):
            done = manifest["sequences"][name]
            results.append(SequenceResult(name, done["frames"], done["seconds"], skipped=True))
            print(f"[{index}/{len(names)}] {name}: already done, skipped")
            continue
        first_labels = read_indexed_png(first_annotation)
        write_indexed_png(out / name / f"{frames[0].stem}.png", first_labels)
        start = time.perf_counter()
        labels = segment_frames(read_bgr_frames(frames), first_labels, model, config, preprocessing, device, autocast)
        bar = tqdm(frames[1:], desc=f"[{index}/{len(names)}] {name}", unit="frame", disable=not progress)
        for frame, label_map in zip(bar, labels, strict=True):
            write_indexed_png(out / name / f"{frame.stem}.png", label_map)
        result = SequenceResult(name, len(frames), time.perf_counter() - start)
        manifest["sequences"][name] = {"frames": result.frames, "seconds": round(result.seconds, 3)}
        atomic_write_json(out / MANIFEST_NAME, manifest)
        results.append(result)
        print(f"[{index}/{len(names)}] {name}: {result.frames} frames, {result.frames_per_second:.2f} frames/s")
    return results
