"""Propagation through any video file OpenCV decodes, from a first-frame mask: PNG masks + overlay video."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from apps.video_seg.pipeline import segment_frames
from apps.video_seg.preprocess import FramePreprocessing
from apps.video_seg.propagation import PropagationConfig
from dino.atomic import atomic_output_path
from dino.data.masks import read_indexed_png, voc_palette, write_indexed_png
from dino.models.vision_transformer import VisionTransformer

__all__ = ["VideoResult", "overlay", "read_video_frames", "segment_video"]

OVERLAY_ALPHA = 0.5
OVERLAY_CODEC = "mp4v"
DEFAULT_FPS = 25.0


@dataclass
class VideoResult:
    """Where the masks and overlay went, how many frames and how fast (propagated frames per second)."""

    masks: Path
    overlay: Path
    frames: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return (self.frames - 1) / self.seconds if self.seconds > 0 else float("nan")


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
    model: VisionTransformer,
    config: PropagationConfig = PropagationConfig(),
    preprocessing: FramePreprocessing = FramePreprocessing(),
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_frames: int | None = None,
) -> VideoResult:
    """Write ``<out>/masks/<frame:05d>.png`` (indexed, DAVIS palette) and ``<out>/overlay.mp4``.

    Args:
        video: Any file OpenCV decodes.
        first_mask: Label PNG (palette or grayscale, 0 = background) of the video's first frame, same size.
        out: Output folder; refused when it is not empty unless `overwrite`.
        max_frames: Stop after this many frames.
        Other arguments: as :func:`apps.video_seg.davis.segment_davis`.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: folder is not empty; pass --overwrite to write there")
    first_labels = read_indexed_png(first_mask)
    masks, overlay_path = out / "masks", out / "overlay.mp4"
    capture = cv2.VideoCapture(os.fspath(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
    capture.release()
    frames = read_video_frames(video, max_frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{video}: no frames could be decoded")
    if first.shape[:2] != first_labels.shape:
        raise ValueError(
            f"{first_mask}: mask is {first_labels.shape[1]}x{first_labels.shape[0]} but {video} frames are "
            f"{first.shape[1]}x{first.shape[0]}"
        )
    height, width = first.shape[:2]
    pending: list[np.ndarray] = [first]

    def remembered() -> Iterator[np.ndarray]:
        # Frames are needed twice (features, then the overlay): keep each until its mask is written.
        yield first
        for frame in frames:
            pending.append(frame)
            yield frame

    start = time.perf_counter()
    count = 1
    with atomic_output_path(overlay_path) as temporary:
        writer = cv2.VideoWriter(
            os.fspath(temporary.with_suffix(".mp4")), cv2.VideoWriter_fourcc(*OVERLAY_CODEC), fps, (width, height)
        )
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {OVERLAY_CODEC} video to {overlay_path}")
        try:
            write_indexed_png(masks / "00000.png", first_labels)
            writer.write(overlay(pending.pop(0), first_labels))
            labels = segment_frames(remembered(), first_labels, model, config, preprocessing, device, autocast)
            for label_map in tqdm(labels, desc=Path(video).name, unit="frame", disable=not progress):
                write_indexed_png(masks / f"{count:05d}.png", label_map)
                writer.write(overlay(pending.pop(0), label_map))
                count += 1
        finally:
            writer.release()
        temporary.with_suffix(".mp4").replace(temporary)
    return VideoResult(masks, overlay_path, count, time.perf_counter() - start)
