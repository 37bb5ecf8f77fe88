"""Indexed (palette) mask PNGs and the DAVIS folder layout (SPEC §11, §20).

The DAVIS and PASCAL VOC annotation palette is generated here (the standard bit-interleaving VOC
colormap), never downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dino.atomic import atomic_output_path
from dino.data.io import ImageLoadError

__all__ = [
    "davis_annotations",
    "davis_frames",
    "davis_sequences",
    "mask_iou",
    "read_indexed_png",
    "voc_palette",
    "write_indexed_png",
]

DAVIS_RESOLUTION = "480p"


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC / DAVIS colormap, (num_colors, 3) uint8: id 0 black, 1 (128,0,0), 2 (0,128,0), …"""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[index] = (r, g, b)
    return palette


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union |A ∩ B| / |A ∪ B| of two masks (non-zero = in), the Jaccard index of region
    scores; 1.0 when both are empty (nothing to find, nothing found), as DAVIS's ``db_eval_iou``.

    Raises:
        ValueError: The shapes differ.
    """
    if first.shape != second.shape:
        raise ValueError(f"mask shapes differ: {first.shape} and {second.shape}")
    first, second = first.astype(bool), second.astype(bool)
    union = np.count_nonzero(first | second)
    return 1.0 if union == 0 else np.count_nonzero(first & second) / union


def read_indexed_png(path: str | os.PathLike[str]) -> np.ndarray:
    """The index map (H, W) uint8 of a palette PNG (object ids; 255 = void in VOC).

    Raises:
        FileNotFoundError: `path` does not exist.
        ImageLoadError: The file is not an image, is damaged, or is not a palette ("P") or single-channel ("L")
            image.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ImageLoadError(f"{path}: expected an indexed (palette) PNG, got mode {image.mode}")
            return np.array(image)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError) as error:
        raise ImageLoadError(f"{path}: cannot decode the mask ({error})") from None


def write_indexed_png(path: str | os.PathLike[str], labels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an (H, W) integer label map as an indexed PNG with the VOC/DAVIS palette, atomically."""
    if labels.ndim != 2:
        raise ValueError(f"{path}: label map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{path}: labels must lie in 0..255")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette((voc_palette() if palette is None else palette).astype(np.uint8).ravel().tolist())
    with atomic_output_path(path) as temporary:
        image.save(temporary, format="PNG")


def davis_sequences(root: str | os.PathLike[str], split: str = "val", year: str = "2017") -> list[str]:
    """Sequence names listed in ``ImageSets/<year>/<split>.txt``."""
    listing = Path(root) / "ImageSets" / year / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: no DAVIS sequence list (expected the DAVIS-2017 layout)")
    return [line.strip() for line in listing.read_text().splitlines() if line.strip()]


def davis_frames(root: str | os.PathLike[str], sequence: str, resolution: str = DAVIS_RESOLUTION) -> list[Path]:
    """Sorted JPEG frames of a sequence: ``JPEGImages/<resolution>/<sequence>/*.jpg``."""
    return _sorted_files(Path(root) / "JPEGImages" / resolution / sequence, ".jpg")


def davis_annotations(root: str | os.PathLike[str], sequence: str, resolution: str = DAVIS_RESOLUTION) -> list[Path]:
    """Sorted annotation PNGs of a sequence: ``Annotations/<resolution>/<sequence>/*.png``."""
    return _sorted_files(Path(root) / "Annotations" / resolution / sequence, ".png")


def _sorted_files(folder: Path, suffix: str) -> list[Path]:
    files = sorted(folder.glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"{folder}: no {suffix} files")
    return files
