"""Indexed (palette) mask PNGs: the annotation palette, label-map reading and writing, mask IoU (SPEC §11, §20).

The DAVIS and PASCAL VOC annotation palette is generated here (the standard bit-interleaving VOC
colormap), never downloaded. Where DAVIS keeps its frames and masks on disk is :mod:`dino.data.davis`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dino.atomic import atomic_output_path
from dino.data.io import ImageLoadError

__all__ = [
    "mask_iou",
    "read_indexed_png",
    "read_label_mask",
    "voc_palette",
    "write_indexed_png",
]

# A colour mask with more distinct non-black colours than this is almost certainly a photo or a JPEG (whose
# compression smears one flat colour into many).
MAX_MASK_OBJECTS = 20
# Masks are decoded whole and their colours counted: refuse, from the header alone, anything larger than an
# 8K frame (7680x4320 = 33.2 M pixels) with room to spare, below PIL's own decompression-bomb warning (89 M).
MAX_MASK_PIXELS = 40_000_000
# Modes whose pixel values are the labels themselves (one channel); any other mode is compared as RGB colours.
_SINGLE_CHANNEL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")


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


def read_label_mask(
    path: str | os.PathLike[str], max_objects: int = MAX_MASK_OBJECTS, display_name: str | None = None
) -> np.ndarray:
    """The object labels (H, W) uint8 of a first-frame mask file: 0 = background, 1..K = objects.

    Palette ("P") images keep their indices, as DAVIS and VOC annotations. Any other image maps each distinct
    non-black colour (grey level for single-channel images) to one object, numbered 1, 2, … in sorted order of
    the colours (RGB compared channel by channel), black staying background: a white-on-black mask is object 1,
    a grey map holding 0, 1, 2 keeps its labels, one holding 0, 3, 7 becomes 0, 1, 2.

    Args:
        path: The mask file (PNG is best; any format PIL reads).
        max_objects: Most objects accepted (1..255); more distinct colours mean a photo or a JPEG.
        display_name: How errors name the file (e.g. an upload's original name); default: `path`.

    Raises:
        FileNotFoundError: `path` is not a file.
        ImageLoadError: Not an image, damaged, or over :data:`MAX_MASK_PIXELS` pixels (a decompression bomb).
        ValueError: More than `max_objects` objects, or no object at all.
    """
    if not 1 <= max_objects <= 255:
        raise ValueError(f"max_objects must lie in 1..255, got {max_objects}")
    name = str(path) if display_name is None else display_name
    if not Path(path).is_file():
        raise FileNotFoundError(f"{name}: no such mask file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_MASK_PIXELS:
                raise ImageLoadError(f"{name}: {width}x{height} pixels, more than a mask may have ({MAX_MASK_PIXELS})")
            image.load()
            image = image.copy()
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: too many pixels for a mask ({error})") from None
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name}: cannot decode the mask ({error})") from None
    labels = _labels_of(image, name, max_objects)
    if not labels.any():
        raise ValueError(f"{name}: the mask is empty (all black/0); mark the object(s) to follow")
    return labels


def _labels_of(image: Image.Image, name: str, max_objects: int) -> np.ndarray:
    if image.mode == "P":
        labels = np.asarray(image, dtype=np.uint8)
        count = np.count_nonzero(np.bincount(labels.ravel(), minlength=256)[1:])
        if count > max_objects:
            raise ValueError(f"{name}: {count} palette indices in use; at most {max_objects} objects")
        return labels
    if image.mode in _SINGLE_CHANNEL_MODES:
        values = np.asarray(image).ravel()
    else:
        # One integer per colour, ordered as the (R, G, B) triples: 1-D np.unique is far faster than axis=0.
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.uint32)
        values = rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]
    colours, inverse = np.unique(values, return_inverse=True)
    background = colours == 0
    if len(colours) - int(background.any()) > max_objects:
        raise ValueError(
            f"{name}: {len(colours)} colours; a mask needs one flat colour per object on black, at most "
            f"{max_objects} objects (save it as PNG, not JPEG)"
        )
    ranks = np.where(background, 0, np.cumsum(~background)).astype(np.uint8)
    return ranks[inverse].reshape(image.height, image.width)


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
