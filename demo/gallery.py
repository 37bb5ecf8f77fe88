"""The demo's offline sample data: photos shipped inside installed packages, written once to a cache folder.

scikit-image ships a few colour photos with its wheel (``skimage.data``), scikit-learn two more
(``load_sample_images``), and this project the butterfly of ``dino/assets``. Together they make a small
gallery to search and to try the attention masks on, with nothing to download.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from dino.atomic import atomic_output_path
from dino.data.masks import write_indexed_png

__all__ = [
    "SampleCopy",
    "SampleVideo",
    "default_cache_dir",
    "sample_copy",
    "sample_gallery",
    "sample_photos",
    "sample_video",
]

# Colour photos (not textures, diagrams or microscopy) that scikit-image ships in its wheel, so loading them
# never triggers a download.
SKIMAGE_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
# The sample clip: a disc cut from skimage's coffee photo gliding over its rocket photo, with the disc's exact
# first-frame mask, so label propagation has a known answer to show.
VIDEO_SIZE = (320, 240)  # width, height
VIDEO_FRAMES = 24
VIDEO_FPS = 8
DISC_RADIUS = 48
# The sample copy: the cat photo cropped, shrunk, brightened and recompressed, edits copy detection must see
# through (SPEC §12's Copydays "strong" attacks are of this kind).
COPY_CROP = (0.08, 0.05, 0.85, 0.9)  # left, top, right, bottom as fractions
COPY_SCALE = 0.6
COPY_BRIGHTNESS = 1.25
COPY_JPEG_QUALITY = 30


def default_cache_dir() -> Path:
    """``$DINO_CACHE_DIR/demo`` or ``$XDG_CACHE_HOME/dino-suite/demo`` (``~/.cache/dino-suite/demo``)."""
    if "DINO_CACHE_DIR" in os.environ:
        return Path(os.environ["DINO_CACHE_DIR"]) / "demo"
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "dino-suite" / "demo"


def sample_photos() -> Iterator[tuple[str, Callable[[], np.ndarray | Image.Image]]]:
    """(name, loader) of every sample photo the installed packages provide; loaders run lazily."""
    from skimage import data

    for name in SKIMAGE_PHOTOS:
        yield f"skimage-{name}", getattr(data, name)
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        pass
    else:
        samples = load_sample_images()
        for filename, image in zip(samples.filenames, samples.images, strict=True):
            yield f"sklearn-{Path(filename).stem}", lambda image=image: image
    butterfly = resources.files("dino") / "assets" / "butterfly.jpg"
    if butterfly.is_file():
        yield "dino-butterfly", lambda: Image.open(butterfly)


def sample_gallery(cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The sample photos as JPEG files in ``cache_dir/gallery`` (written on first use), sorted by name.

    A photo whose package cannot provide it is skipped with a warning, so the gallery still opens.

    Args:
        cache_dir: Where to write the files; :func:`default_cache_dir` when omitted.

    Raises:
        ValueError: No installed package provided a single photo.
    """
    folder = Path(cache_dir or default_cache_dir()) / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, load in sample_photos():
        path = folder / f"{name}.jpg"
        if not path.is_file():
            try:
                image = load()
            except Exception as error:  # a package whose data file is missing must not stop the demo
                warnings.warn(f"sample photo {name} unavailable: {error}", stacklevel=2)
                continue
            image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
            with atomic_output_path(path) as temporary:
                image.convert("RGB").save(temporary, format="JPEG", quality=92)
        paths.append(path)
    if not paths:
        raise ValueError("no sample photos found: install scikit-image (and optionally scikit-learn)")
    return sorted(paths)


class SampleVideo(NamedTuple):
    """A short clip and the indexed-PNG mask of the object in its first frame."""

    video: Path
    first_mask: Path


def sample_video(cache_dir: str | os.PathLike[str] | None = None) -> SampleVideo:
    """A synthetic clip (WebM/VP8, plays in browsers) of a textured disc moving over a photo, and its
    first-frame mask (label 1 = the disc), written on first use to ``cache_dir/video``."""
    from skimage import data

    folder = Path(cache_dir or default_cache_dir()) / "video"
    sample = SampleVideo(folder / "disc.webm", folder / "disc-first-mask.png")
    if sample.video.is_file() and sample.first_mask.is_file():
        return sample
    import cv2

    width, height = VIDEO_SIZE
    background = np.asarray(Image.fromarray(data.rocket()).resize(VIDEO_SIZE, Image.Resampling.BILINEAR))
    cup = data.coffee()
    centre_y, centre_x = cup.shape[0] // 2, cup.shape[1] // 2
    texture = cup[centre_y - DISC_RADIUS : centre_y + DISC_RADIUS, centre_x - DISC_RADIUS : centre_x + DISC_RADIUS]
    yy, xx = np.mgrid[: 2 * DISC_RADIUS, : 2 * DISC_RADIUS]
    disc = (yy - DISC_RADIUS + 0.5) ** 2 + (xx - DISC_RADIUS + 0.5) ** 2 <= DISC_RADIUS**2
    top = height // 2 - DISC_RADIUS
    lefts = np.linspace(8, width - 2 * DISC_RADIUS - 8, VIDEO_FRAMES).round().astype(int)

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output_path(sample.video) as temporary:
        # OpenCV picks the container from the extension, so the temporary name keeps it.
        webm = temporary.with_suffix(".webm")
        writer = cv2.VideoWriter(str(webm), cv2.VideoWriter_fourcc(*"VP80"), VIDEO_FPS, VIDEO_SIZE)
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write WebM/VP8 video here")
        for left in lefts:
            frame = background.copy()
            window = frame[top : top + 2 * DISC_RADIUS, left : left + 2 * DISC_RADIUS]
            window[disc] = texture[disc]
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(webm, temporary)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[top : top + 2 * DISC_RADIUS, lefts[0] : lefts[0] + 2 * DISC_RADIUS][disc] = 1
    write_indexed_png(sample.first_mask, labels)
    return sample


class SampleCopy(NamedTuple):
    """An original photo, an edited copy of it, and an unrelated photo."""

    original: Path
    copy: Path
    other: Path


def sample_copy(cache_dir: str | os.PathLike[str] | None = None) -> SampleCopy:
    """Files for the Copy check examples, the copy written on first use to ``cache_dir/copies``."""
    from PIL import ImageEnhance

    gallery = {path.stem: path for path in sample_gallery(cache_dir)}
    original, other = gallery.get("skimage-chelsea"), gallery.get("skimage-coffee")
    if original is None or other is None:
        raise ValueError("the copy examples need scikit-image's chelsea and coffee photos")
    copy = Path(cache_dir or default_cache_dir()) / "copies" / "skimage-chelsea-edited.jpg"
    if not copy.is_file():
        with Image.open(original) as image:
            width, height = image.size
            left, top, right, bottom = COPY_CROP
            edited = image.crop(
                (round(left * width), round(top * height), round(right * width), round(bottom * height))
            )
            edited = edited.resize((round(edited.width * COPY_SCALE), round(edited.height * COPY_SCALE)))
            edited = ImageEnhance.Brightness(edited).enhance(COPY_BRIGHTNESS)
            with atomic_output_path(copy) as temporary:
                edited.save(temporary, format="JPEG", quality=COPY_JPEG_QUALITY)
    return SampleCopy(original, copy, other)
