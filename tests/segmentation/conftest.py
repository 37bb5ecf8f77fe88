"""A tiny PASCAL VOC12 layout built in the test: palette PNGs with object ids and a void (255) border."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino.data.masks import write_indexed_png

VOC_SIZE = 64


@pytest.fixture
def voc_size() -> int:
    """Side of the square test images (evaluate with --size voc_size so nothing is resized)."""
    return VOC_SIZE


@pytest.fixture
def voc_labels() -> dict[str, np.ndarray]:
    """Per image id: SegmentationObject labels (0 background, 255 void, 1..K objects)."""
    first = np.zeros((VOC_SIZE, VOC_SIZE), dtype=np.uint8)
    first[8:24, 8:40] = 1
    first[40:60, 30:50] = 2
    first[7, 8:40] = 255  # void outline, as in VOC
    second = np.zeros((VOC_SIZE, VOC_SIZE), dtype=np.uint8)
    second[16:48, 16:48] = 1
    second[15, :] = 255
    return {"2007_000001": first, "2007_000002": second}


@pytest.fixture
def voc_root(tmp_path: Path, voc_labels: dict[str, np.ndarray]) -> Path:
    root = tmp_path / "VOC2012"
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for name, objects in voc_labels.items():
        Image.fromarray(rng.integers(0, 255, (VOC_SIZE, VOC_SIZE, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{name}.jpg"
        )
        write_indexed_png(root / "SegmentationObject" / f"{name}.png", objects)
        classes = np.where((objects > 0) & (objects < 255), 15, objects)  # every object a "person"
        write_indexed_png(root / "SegmentationClass" / f"{name}.png", classes)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(voc_labels) + "\n")
    return root
