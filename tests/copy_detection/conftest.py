"""Small synthetic photos for the copy-detection tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def smooth_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: coarse random colour blobs upsampled smoothly (JPEG and crops keep its look)."""
    coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of 5 small photos of different sizes and formats."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate([(96, 64), (80, 80), (64, 96), (120, 72), (72, 72)]):
        suffix = ".png" if index % 2 else ".jpg"
        smooth_photo(rng, width, height).save(folder / f"photo{index}{suffix}")
    return folder
