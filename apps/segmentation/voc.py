"""Ground-truth readers: the PASCAL VOC12 segmentation layout, and DAVIS foreground masks as a stand-in.

VOC layout (``ROOT`` is the ``VOC2012`` folder)::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationObject/<id>.png   instance ids 1..K, 0 background, 255 void (palette PNG)
    ROOT/SegmentationClass/<id>.png    class ids 1..20, 0 background, 255 void (palette PNG)
    ROOT/ImageSets/Segmentation/<split>.txt
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from dino.data.davis import davis_annotations, davis_frames, davis_sequences
from dino.data.masks import read_indexed_png

__all__ = ["MaskKind", "SegmentationSample", "davis_samples", "read_labels", "voc_samples"]

MaskKind = Literal["object", "class", "foreground"]
VOC_MASK_FOLDERS = {"object": "SegmentationObject", "class": "SegmentationClass"}


@dataclass(frozen=True)
class SegmentationSample:
    """One image and its ground truth.

    Attributes:
        name: Identifier written to the per-image results (VOC id, or ``sequence/frame`` for DAVIS).
        image: Path of the image.
        annotation: Path of the indexed-PNG annotation.
        kind: ``object``/``class``: the PNG's ids are the objects (VOC); ``foreground``: every non-zero id
            is one foreground object (DAVIS-2016, single object per sequence).
    """

    name: str
    image: Path
    annotation: Path
    kind: MaskKind


def voc_samples(
    root: str | os.PathLike[str], split: str = "val", masks: MaskKind = "object"
) -> list[SegmentationSample]:
    """The images of a VOC segmentation split with their object or class masks.

    Raises:
        FileNotFoundError: The split list, an image or a mask is missing (the message names it).
    """
    if masks not in VOC_MASK_FOLDERS:
        raise ValueError(f"unknown VOC mask kind {masks!r}; choose object or class")
    root = Path(root)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: no VOC segmentation split list (expected the VOC2012 folder layout)")
    names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{listing}: the split lists no images")
    samples = []
    for name in names:
        image = root / "JPEGImages" / f"{name}.jpg"
        annotation = root / VOC_MASK_FOLDERS[masks] / f"{name}.png"
        for path in (image, annotation):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {listing} but missing")
        samples.append(SegmentationSample(name, image, annotation, masks))
    return samples


def davis_samples(
    root: str | os.PathLike[str], split: str = "val", every: int = 5, year: str = "2017"
) -> list[SegmentationSample]:
    """Every `every`-th frame (0, every, 2·every, …) of each sequence of a DAVIS split, foreground masks.

    Raises:
        FileNotFoundError: The sequence list or a sequence's frames are missing.
        ValueError: A frame has no annotation.
    """
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    samples = []
    for sequence in davis_sequences(root, split, year):
        annotations = {path.stem: path for path in davis_annotations(root, sequence)}
        for frame in davis_frames(root, sequence)[::every]:
            if frame.stem not in annotations:
                raise ValueError(f"{frame}: no annotation {frame.stem}.png for this frame")
            samples.append(SegmentationSample(f"{sequence}/{frame.stem}", frame, annotations[frame.stem], "foreground"))
    return samples


def read_labels(sample: SegmentationSample) -> np.ndarray:
    """The sample's label map (H, W) uint8: 0 background, 255 void, other values objects."""
    labels = read_indexed_png(sample.annotation)
    if sample.kind == "foreground":
        # DAVIS-2016 has one object per sequence; its masks carry no void label.
        return (labels > 0).astype(np.uint8)
    return labels
