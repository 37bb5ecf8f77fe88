"""Opening images robustly and listing image files.

Every image the project reads goes through :func:`open_image`, so EXIF orientation, odd modes and
broken files are handled in one place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageLoadError", "list_images", "open_image", "to_rgb"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Transparent pixels are composited onto white, the usual background for photos with an alpha channel.
ALPHA_BACKGROUND = (255, 255, 255)


class ImageLoadError(ValueError):
    """A file that is not a readable image; the message names the file and the problem."""


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open any image file as an RGB PIL image with its EXIF orientation applied.

    Palette, grayscale, RGBA/LA (composited on white), CMYK and 16-bit/float images are converted to
    8-bit RGB. The pixels are decoded here, so a truncated file fails now rather than later.

    Raises:
        FileNotFoundError: `path` does not exist.
        ImageLoadError: The file is not an image, is truncated/corrupt, or has more pixels than PIL's
            decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS`` × 2).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as error:
        # PIL's guard against files that decode to far more pixels than they weigh; the message gives both counts.
        raise ImageLoadError(f"{path}: too many pixels to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{path}: cannot decode image ({error})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit integers are scaled by 255/65535; floats are taken to lie in [0, 1]."""
    if np.issubdtype(array.dtype, np.floating):
        scaled = array * 255.0
    else:
        scaled = array.astype(np.float64) * (255.0 / 65535.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def list_images(
    roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    required: bool = False,
) -> list[Path]:
    """Image files under one or more folders (or given directly), sorted within each root.

    Files are matched on their extension, case-insensitively; hidden files and folders are skipped.

    Raises:
        FileNotFoundError: A root does not exist.
        ValueError: `required` and no image was found (the message names the roots).
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = list(roots)
    wanted = tuple(ext.lower() if ext.startswith(".") else "." + ext.lower() for ext in extensions)
    found: list[Path] = []
    for root in map(Path, roots):
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            pattern = root.rglob("*") if recursive else root.glob("*")
            found.extend(
                sorted(
                    p
                    for p in pattern
                    if p.is_file()
                    and p.suffix.lower() in wanted
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)
                )
            )
        else:
            raise FileNotFoundError(f"{root}: no such file or folder")
    if required and not found:
        raise ValueError(f"no images found in {', '.join(map(str, roots))}")
    return found
