"""Pictures for the page: colour-mapped maps and thumbnails.

Display only; every number drawn here was computed by an app.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from dino.data.transforms import Thumbnail

__all__ = ["colorize", "thumbnail", "to_uint8"]

THUMBNAIL_SIDE = 256


def colorize(values: np.ndarray, cmap: str) -> np.ndarray:
    """A 2-D map stretched min→max onto a matplotlib colormap, (H, W, 3) uint8."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as uint8."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """A copy that fits in side×side, for result galleries."""
    return Thumbnail(side)(image)
