"""Propagation through any video file OpenCV decodes, from a first-frame mask: PNG masks + overlay video.

The results folder appears whole or not at all: it is filled beside its final place and renamed there at the end,
so a killed run leaves no half-written folder, and re-running the same command starts over cleanly.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from apps.video_seg.encoding import VideoWriter
from apps.video_seg.pipeline import segment_frames
from apps.video_seg.preprocess import FramePreprocessing
from apps.video_seg.propagation import PropagationConfig
from dino.atomic import (
    atomic_output_dir,
    remove_replaced_backups,
    remove_stale_temporaries,
    restore_interrupted_output_dir,
)
from dino.data.masks import read_label_mask, voc_palette, write_indexed_png

if TYPE_CHECKING:
    from dino.models.backbone import Backbone

__all__ = ["VIDEO_OUTPUTS", "VideoResult", "overlay", "read_video_frames", "segment_video", "video_properties"]

OVERLAY_ALPHA = 0.5
OVERLAY_NAME = "overlay.mp4"
MASKS_NAME = "masks"
# What a --video results folder holds: --overwrite replaces such a folder, and refuses one holding anything else.
VIDEO_OUTPUTS = (MASKS_NAME, OVERLAY_NAME)
DEFAULT_FPS = 25.0
# Containers without a sane frame rate (0, NaN, a 90 kHz time base) get DEFAULT_FPS.
MAX_FPS = 240.0


@dataclass
class VideoResult:
    """Where the masks and overlay went, the overlay's codec, how many frames and how fast (propagated frames
    per second)."""

    masks: Path
    overlay: Path
    overlay_codec: str
    frames: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return (self.frames - 1) / self.seconds if self.seconds > 0 else float("nan")


def video_properties(path: str | os.PathLike[str]) -> tuple[float, int | None]:
    """The frame rate (:data:`DEFAULT_FPS` when the container gives none that is sane) and frame count (None when
    the container does not say) of a video file, as OpenCV reads them."""
    capture = cv2.VideoCapture(os.fspath(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        capture.release()
    fps = fps if math.isfinite(fps) and 1 <= fps <= MAX_FPS else DEFAULT_FPS
    return fps, int(count) if math.isfinite(count) and count >= 1 else None


def read_video_frames(path: str | os.PathLike[str], max_frames: int | None = None) -> Iterator[np.ndarray]:
    """BGR frames of a video file, in order.

    Raises:
        FileNotFoundError: The file does not exist or OpenCV cannot open it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    capture = cv2.VideoCapture(os.fspath(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"{path}: OpenCV cannot decode this video")
    try:
        count = 0
        while max_frames is None or count < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            yield frame
    finally:
        capture.release()


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend the DAVIS palette colour of each object over a BGR frame (background left as is)."""
    colours = voc_palette()[labels][:, :, ::-1].astype(np.float32)
    blended = frame.astype(np.float32)
    objects = labels > 0
    blended[objects] = (1 - alpha) * blended[objects] + alpha * colours[objects]
    return blended.round().astype(np.uint8)


def segment_video(
    video: str | os.PathLike[str],
    first_mask: str | os.PathLike[str],
    out: str | os.PathLike[str],
    model: Backbone,
    config: PropagationConfig = PropagationConfig(),
    preprocessing: FramePreprocessing = FramePreprocessing(),
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_frames: int | None = None,
) -> VideoResult:
    """Write ``<out>/masks/<frame:05d>.png`` (indexed, DAVIS palette) and ``<out>/overlay.mp4`` (H.264 when PyAV
    has an encoder, see :mod:`apps.video_seg.encoding`), all at once when the last frame is done.

    Args:
        video: Any file OpenCV decodes.
        first_mask: The first frame's mask, same size (:func:`dino.data.masks.read_label_mask`: a palette PNG
            keeps its indices, flat colours on black are numbered).
        out: Output folder; refused when it is not empty unless `overwrite`, which replaces an earlier output
            of this function (never a folder holding anything else).
        max_frames: Stop after this many frames.
        Other arguments: as :func:`apps.video_seg.davis.segment_davis`.

    Raises:
        FileExistsError: `out` may not be replaced.
        ValueError: The mask does not fit the video, or the frame size changes mid-stream (nothing is written).
    """
    out = Path(out).absolute()
    # A run killed while replacing an earlier output left that output beside `out`: put it back, or delete it
    # when the new one made it into place.
    restore_interrupted_output_dir(out, is_complete=_is_video_output)
    remove_replaced_backups(out, is_complete=_is_video_output)
    _check_output(out, overwrite)
    first_labels = read_label_mask(first_mask)
    frames = read_video_frames(video, max_frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{video}: no frames could be decoded")
    if first.shape[:2] != first_labels.shape:
        raise ValueError(
            f"{first_mask}: mask is {first_labels.shape[1]}x{first_labels.shape[0]} but {video} frames are "
            f"{first.shape[1]}x{first.shape[0]}"
        )
    fps, frame_count = video_properties(video)
    total = None if frame_count is None else min(frame_count, max_frames or frame_count)
    height, width = first.shape[:2]
    pending: list[np.ndarray] = [first]

    def remembered() -> Iterator[np.ndarray]:
        # Frames are needed twice (features, then the overlay): keep each until its mask is written.
        yield first
        for index, frame in enumerate(frames, 1):
            if frame.shape != first.shape:
                raise ValueError(
                    f"{video}: frame {index} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                    f"{width}x{height}; the decoder changed the frame size mid-stream (re-encode it at one size)"
                )
            pending.append(frame)
            yield frame

    start = time.perf_counter()
    count = 1
    remove_stale_temporaries(out.parent)  # the folders of runs killed before they were renamed into place
    with atomic_output_dir(out, replaceable=lambda _: overwrite) as staging:
        masks = staging / MASKS_NAME
        with VideoWriter(staging / OVERLAY_NAME, fps, width, height) as writer:
            write_indexed_png(masks / "00000.png", first_labels)
            writer.write(overlay(pending.pop(0), first_labels))
            labels = segment_frames(
                remembered(), first_labels, model, config, preprocessing, device, autocast, name=str(video)
            )
            bar = tqdm(labels, desc=Path(video).name, unit="frame", total=total, initial=1, disable=not progress)
            for label_map in bar:
                write_indexed_png(masks / f"{count:05d}.png", label_map)
                writer.write(overlay(pending.pop(0), label_map))
                count += 1
    return VideoResult(out / MASKS_NAME, out / OVERLAY_NAME, writer.codec, count, time.perf_counter() - start)


def _is_video_output(folder: Path) -> bool:
    """Whether `folder` holds nothing but what :func:`segment_video` writes (and temporaries of killed writers)."""
    return folder.is_dir() and not _foreign_entries(folder)


def _foreign_entries(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in VIDEO_OUTPUTS and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    )


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that is not empty unless `overwrite` may replace it."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out}: folder is not empty; pass --overwrite to replace an earlier --video output")
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{out}: --overwrite replaces the whole folder, but it holds more than a --video output ({shown}); "
            "choose another folder"
        )
