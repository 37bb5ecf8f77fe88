"""Propagation over a DAVIS-2017-layout dataset: ``<out>/<sequence>/<frame>.png`` indexed PNGs (SPEC §11).

Runs are resumable: ``<out>/video_seg.json`` records the settings, the sequences asked for and, after each
sequence, its frame count and speed. Each sequence's folder is filled beside its place and renamed there when
its last frame is done, so it appears complete or not at all, and a killed run loses only the sequence it was
on. Re-running with the same settings skips finished sequences; a non-empty folder that is not such a run (or
a run with other settings) is refused unless ``overwrite`` is set. ``dino video-eval`` evaluates the
finished sequences (:func:`recorded_sequences`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from apps.video_seg.pipeline import segment_frames
from apps.video_seg.preprocess import FramePreprocessing, read_bgr
from apps.video_seg.propagation import PropagationConfig
from dino.atomic import (
    atomic_output_dir,
    atomic_write_json,
    remove_replaced_backups,
    remove_stale_temporaries,
    restore_interrupted_output_dir,
)
from dino.checkpoint import weights_record, weights_sha256
from dino.data.davis import davis_first_annotation, davis_frames, davis_sequences
from dino.data.io import ImageLoadError
from dino.data.masks import read_indexed_png, write_indexed_png
from dino.models.backbone import is_resnet

if TYPE_CHECKING:
    from dino.models.backbone import Backbone

__all__ = ["MANIFEST_NAME", "SequenceResult", "read_bgr_frames", "recorded_sequences", "segment_davis"]

MANIFEST_NAME = "video_seg.json"
EXIF_ORIENTATION = 0x0112
# EXIF orientations that turn the picture by 90 degrees: OpenCV applies them when decoding, swapping the sides.
_QUARTER_TURNS = (5, 6, 7, 8)


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
    """Decode image files with OpenCV (BGR, as the reference), one at a time.

    Raises:
        ValueError: A frame has another size than the first (the message names both files and sizes).
    """
    first_shape = None
    for path in paths:
        frame = read_bgr(path)
        if first_shape is None:
            first_shape = frame.shape
        elif frame.shape != first_shape:
            raise ValueError(_size_mismatch(path, frame.shape[1::-1], paths[0], first_shape[1::-1]))
        yield frame


def _size_mismatch(path: Path, size: tuple[int, int], first: Path, first_size: tuple[int, int]) -> str:
    return (
        f"{path}: frame is {size[0]}x{size[1]} but {first.name}, the sequence's first frame, is "
        f"{first_size[0]}x{first_size[1]}; every frame of a sequence must have one size"
    )


def _decoded_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as OpenCV decodes it (EXIF orientation applied), read from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION, 1) in _QUARTER_TURNS
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{path}: cannot read the image ({error})") from None
    return (height, width) if turned else (width, height)


def _check_sizes(frames: Sequence[Path], first_annotation: Path) -> None:
    """Refuse a sequence whose frames differ in size or whose first annotation does not fit its first frame,
    from the files' headers, before any work."""
    first_size = _decoded_size(frames[0])
    for path in frames[1:]:
        size = _decoded_size(path)
        if size != first_size:
            raise ValueError(_size_mismatch(path, size, frames[0], first_size))
    mask_size = _decoded_size(first_annotation)
    if mask_size != first_size:
        raise ValueError(
            f"{first_annotation}: mask is {mask_size[0]}x{mask_size[1]} but the first frame {frames[0].name} is "
            f"{first_size[0]}x{first_size[1]}"
        )


def _settings(model: Backbone, config: PropagationConfig, preprocessing: FramePreprocessing, autocast) -> dict:
    return {
        **weights_record(model),
        "backbone_sha256": weights_sha256(model),
        "patch_size": model.patch_size,
        "embed_dim": model.embed_dim,
        **_grid_record(model),
        "propagation": dataclasses.asdict(config) | {"max_affinity_mb": None},  # memory does not change results
        "preprocessing": dataclasses.asdict(preprocessing.for_patch(model.patch_size)),
        "backbone_autocast": str(autocast) if autocast is not None else "fp32",
    }


def _grid_record(model: Backbone) -> dict:
    """For a ResNet, which grid the labels were propagated on: ``{"backbone": {"arch", "grid_layer", "grid_stride",
    "grid_dim"}}`` (``patch_size`` is then the grid's stride and ``embed_dim`` the pooled width); nothing for a ViT,
    whose patch tokens are the grid, so that the records of ViT runs stay as they were."""
    if not is_resnet(model):
        return {}
    grid = {"arch": model.arch, "grid_layer": model.grid_layer, "grid_stride": model.patch_size}
    return {"backbone": grid | {"grid_dim": model.grid_dim}}


def _prepare_output(out: Path, settings: dict, overwrite: bool) -> dict:
    """The manifest to continue from; refuses a non-empty folder that is not a compatible run."""
    manifest_path = out / MANIFEST_NAME
    if overwrite or not out.exists() or not any(out.iterdir()):
        return {"settings": settings, "requested": [], "sequences": {}}
    if not manifest_path.is_file():
        raise FileExistsError(
            f"{out}: folder is not empty and holds no {MANIFEST_NAME}; pass --overwrite to write there"
        )
    manifest = json.loads(manifest_path.read_text())
    if not _same_settings(manifest.get("settings", {}), settings):
        raise FileExistsError(
            f"{out}: holds a run with other settings ({manifest_path}); pass --overwrite or choose another folder"
        )
    # Runs recorded before "requested" was: the sequences they finished.
    manifest.setdefault("requested", list(manifest["sequences"]))
    return manifest


def recorded_sequences(results: str | os.PathLike[str]) -> list[str] | None:
    """The sequences the ``video-seg --davis`` run(s) into `results` were asked for, in that order, all finished;
    None when `results` holds no run record (``video_seg.json``).

    Raises:
        ValueError: Some of them are not finished (a run was interrupted), naming them and the remedies.
    """
    manifest_path = Path(results) / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        finished = manifest["sequences"]
        requested = manifest.get("requested", list(finished))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{manifest_path}: not a video-seg run record ({error})") from None
    unfinished = [name for name in requested if name not in finished]
    if unfinished:
        raise ValueError(
            f"{manifest_path}: the run did not finish {', '.join(unfinished)}; re-run the same dino video-seg "
            "command to finish, or pass --sequences to evaluate others"
        )
    return list(requested)


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
    model: Backbone,
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
        model: Backbone on `device`, in eval mode (a ResNet propagates on its ``grid_layer`` grid, which the
            manifest records).
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
    names = list(dict.fromkeys(sequences)) if sequences else davis_sequences(root)
    # Every sequence's frames and first annotation are found and their sizes checked before anything is written.
    inputs = {name: (davis_frames(root, name), davis_first_annotation(root, name)) for name in names}
    for frames, first_annotation in inputs.values():
        _check_sizes(frames, first_annotation)
    manifest = _prepare_output(out, _settings(model, config, preprocessing, autocast), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # sequence folders of killed runs, never renamed into place
    manifest["requested"] += [name for name in names if name not in manifest["requested"]]
    atomic_write_json(out / MANIFEST_NAME, manifest)
    results = []
    for index, name in enumerate(names, 1):
        frames, first_annotation = inputs[name]
        # A run killed while replacing this sequence's folder left the old one aside: put it back, or delete it.
        restore_interrupted_output_dir(out / name)
        remove_replaced_backups(out / name)
        if _finished(out, name, frames, manifest):
            done = manifest["sequences"][name]
            results.append(SequenceResult(name, done["frames"], done["seconds"], skipped=True))
            print(f"[{index}/{len(names)}] {name}: already done, skipped")
            continue
        first_labels = read_indexed_png(first_annotation)
        start = time.perf_counter()
        # The folder is this run's to replace: `out` is empty, this run's, or `overwrite` was given.
        with atomic_output_dir(out / name, replaceable=lambda _: True) as staging:
            write_indexed_png(staging / f"{frames[0].stem}.png", first_labels)
            labels = segment_frames(
                read_bgr_frames(frames),
                first_labels,
                model,
                config,
                preprocessing,
                device,
                autocast,
                name=str(frames[0].parent),
            )
            bar = tqdm(frames[1:], desc=f"[{index}/{len(names)}] {name}", unit="frame", disable=not progress)
            for frame, label_map in zip(bar, labels, strict=True):
                write_indexed_png(staging / f"{frame.stem}.png", label_map)
        result = SequenceResult(name, len(frames), time.perf_counter() - start)
        manifest["sequences"][name] = {"frames": result.frames, "seconds": round(result.seconds, 3)}
        atomic_write_json(out / MANIFEST_NAME, manifest)
        results.append(result)
        print(f"[{index}/{len(names)}] {name}: {result.frames} frames, {result.frames_per_second:.2f} frames/s")
    return results
