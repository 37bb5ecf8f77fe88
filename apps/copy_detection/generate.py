"""Build a Copydays-layout copy-detection benchmark from any photos, deterministically from a seed (SPEC §12).

Copydays (Jégou et al., 2008) attacks each original photo three ways; this generator does the same to the
user's photos and writes the layout :func:`apps.copy_detection.copydays.read_copydays` reads:

    ROOT/original/            the originals, re-encoded as JPEG
    ROOT/jpegqual/<q>/        JPEG re-encodes at quality q ∈ JPEG_QUALITIES
    ROOT/crops/<c>/           crops removing c % of the area, c ∈ CROP_PERCENTS (aspect ratio kept)
    ROOT/strong/              strong edits: rotation, blur, colour change, overlaid text and patches, noise,
                              print-and-scan-like degradation
    ROOT/benchmark.json       the seed, the source of every original and the edits behind every strong copy

Originals are named ``NNNN00.jpg`` (NNNN = 1-based index); their strong copies ``NNNNjj.jpg`` share the first
four characters (the protocol's rule for strong positives) and the 1:1 blocks reuse the original's name, so they
keep its sorted position. Every random choice comes from NumPy generators seeded by the seed (and the original's
index), so the same photos and seed give byte-identical files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont
from tqdm import tqdm

from apps.copy_detection.copydays import ORIGINAL_BLOCK, STRONG_BLOCK
from apps.copy_detection.defaults import STRONG_PER_ORIGINAL
from dino.atomic import atomic_output_dir, atomic_write_json, check_output_dir
from dino.data.io import list_images, open_image

__all__ = [
    "CROP_PERCENTS",
    "JPEG_QUALITIES",
    "STRONG_EDITS",
    "BenchmarkSummary",
    "crop_area",
    "make_benchmark",
    "strong_copy",
]

# The Copydays levels: JPEG quality factors and the percentage of the area a crop removes.
JPEG_QUALITIES: tuple[int, ...] = (3, 5, 8, 10, 15, 20, 30, 50, 75)
CROP_PERCENTS: tuple[int, ...] = (10, 15, 20, 30, 40, 50, 60, 70, 80)
# Originals, crops, distractors and whitening images are stored as near-lossless JPEG (Copydays is all JPEG,
# and the reference reads only .jpg files); strong copies are saved at a typical camera/web quality.
ARCHIVE_QUALITY = 95
STRONG_QUALITY = 85
EDITS_PER_STRONG = 2
# A crop keeps (1 − c%) of the area; its centre is jittered by up to this fraction of the free margin.
CROP_CENTRE_JITTER = 0.5
# Blur radii scale with the photo, with a floor so that small photos are visibly blurred too.
MIN_BLUR_RADIUS = 2.0
MANIFEST_NAME = "benchmark.json"
_WORDS = ("COPY", "sample", "2026", "holiday", "(c) dino", "SALE", "breaking news", "photo", "#tbt", "free")

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


# ---------------------------------------------------------------------------- the attacks
def crop_area(image: Image.Image, percent: float, rng: np.random.Generator) -> Image.Image:
    """Crop away `percent` % of the area, keeping the aspect ratio, around a jittered centre."""
    keep = (1.0 - percent / 100.0) ** 0.5
    width, height = image.size
    crop_w, crop_h = max(1, round(width * keep)), max(1, round(height * keep))
    left = _jittered_offset(width - crop_w, rng)
    top = _jittered_offset(height - crop_h, rng)
    return image.crop((left, top, left + crop_w, top + crop_h))


def _jittered_offset(margin: int, rng: np.random.Generator) -> int:
    return round(margin / 2 * (1 + CROP_CENTRE_JITTER * rng.uniform(-1, 1)))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 10–35° either way, the canvas grown to hold the whole photo, corners filled with one colour."""
    angle = float(rng.uniform(10, 35) * rng.choice((-1, 1)))
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=_random_colour(rng))


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur of 0.6–1.5 % of the longer side, at least 2 pixels."""
    radius = max(MIN_BLUR_RADIUS, float(rng.uniform(0.006, 0.015)) * max(image.size))
    return image.filter(ImageFilter.GaussianBlur(radius=radius))


def colour_change(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Hue rotation, then saturation, contrast and brightness changes."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(20, 236))) % 256
    image = Image.fromarray(hsv, mode="HSV").convert("RGB")
    for enhancer, low, high in ((ImageEnhance.Color, 0.3, 1.8), (ImageEnhance.Contrast, 0.6, 1.5)):
        image = enhancer(image).enhance(float(rng.uniform(low, high)))
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.3)))


def overlay_text(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One to three lines of outlined caption text in random places, sizes and colours."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(int(rng.integers(1, 4))):
        font = ImageFont.load_default(size=max(8, round(float(rng.uniform(0.06, 0.14)) * min(width, height))))
        text = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 3))))
        position = (float(rng.uniform(0, 0.6)) * width, float(rng.uniform(0, 0.85)) * height)
        draw.text(position, text, font=font, fill=_random_colour(rng), stroke_width=2, stroke_fill=_random_colour(rng))
    return image


def overlay_patches(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Two to four solid rectangles or ellipses, each covering 2–8 % of the area."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(int(rng.integers(2, 5))):
        side = float(rng.uniform(0.02, 0.08)) ** 0.5
        patch_w, patch_h = side * width, side * height
        left, top = float(rng.uniform(0, width - patch_w)), float(rng.uniform(0, height - patch_h))
        box = (left, top, left + patch_w, top + patch_h)
        shape = draw.ellipse if rng.uniform() < 0.5 else draw.rectangle
        shape(box, fill=_random_colour(rng))
    return image


def add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, σ = 10–30 grey levels."""
    return _noisy(image, float(rng.uniform(10, 30)), rng)


def _noisy(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def print_and_scan(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A printed-then-scanned look: perspective skew, blur, colour cast, sensor noise and JPEG compression."""
    width, height = image.size
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    moved = corners + rng.uniform(-0.06, 0.06, (4, 2)) * (width, height)
    image = image.transform(
        image.size,
        Image.Transform.PERSPECTIVE,
        _perspective_coefficients(corners, moved),
        resample=Image.Resampling.BICUBIC,
        fillcolor=(245, 245, 240),
    )
    radius = max(MIN_BLUR_RADIUS / 2, float(rng.uniform(0.002, 0.005)) * max(image.size))
    image = image.filter(ImageFilter.GaussianBlur(radius=radius))
    cast = np.asarray(image, dtype=np.float32) * rng.uniform(0.85, 1.15, 3) + rng.uniform(-12, 12, 3)
    image = Image.fromarray(np.clip(np.rint(cast), 0, 255).astype(np.uint8))
    image = _noisy(image, float(rng.uniform(4, 10)), rng)
    return _jpeg_roundtrip(image, int(rng.integers(35, 70)))


def _perspective_coefficients(output_corners: np.ndarray, input_corners: np.ndarray) -> tuple[float, ...]:
    """The 8 coefficients PIL's PERSPECTIVE transform needs to map each output corner to an input corner."""
    rows, targets = [], []
    for (x, y), (u, v) in zip(output_corners, input_corners, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        targets.extend((u, v))
    return tuple(float(c) for c in np.linalg.solve(np.array(rows), np.array(targets)))


def _jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


# The strong edits, in the order they are applied when a copy combines several.
STRONG_EDITS: dict[str, Edit] = {
    "rotate": rotate,
    "colour": colour_change,
    "patches": overlay_patches,
    "text": overlay_text,
    "blur": blur,
    "noise": add_noise,
    "print_scan": print_and_scan,
}


def strong_copy(
    image: Image.Image, rng: np.random.Generator, edits_per_copy: int = EDITS_PER_STRONG
) -> tuple[Image.Image, list[str]]:
    """Apply `edits_per_copy` distinct strong edits drawn at random; returns the copy and the edit names."""
    names = list(STRONG_EDITS)
    chosen = sorted(rng.choice(len(names), size=edits_per_copy, replace=False))
    for index in chosen:
        image = STRONG_EDITS[names[index]](image, rng)
    return image, [names[index] for index in chosen]


# ---------------------------------------------------------------------------- the benchmark tree
@dataclass(frozen=True)
class BenchmarkSummary:
    """What :func:`make_benchmark` wrote.

    Attributes:
        root: The Copydays-layout folder.
        originals: Number of originals.
        strong: Number of strong copies.
        distractors: Folder of the distractor photos, if written.
        whitening: Folder of the whitening photos, if written.
    """

    root: Path
    originals: int
    strong: int
    distractors: Path | None
    whitening: Path | None


def make_benchmark(
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    seed: int = 0,
    originals: int | None = None,
    distractors_out: str | os.PathLike[str] | None = None,
    whitening_out: str | os.PathLike[str] | None = None,
    whitening_count: int = 0,
    strong_per_original: int = STRONG_PER_ORIGINAL,
    max_side: int | None = None,
    jpeg_qualities: Sequence[int] = JPEG_QUALITIES,
    crop_percents: Sequence[float] = CROP_PERCENTS,
    progress: bool = True,
) -> BenchmarkSummary:
    """Write a Copydays-layout benchmark built from `images`.

    The photos are shuffled with the seed and split into originals, then (if `whitening_out`) `whitening_count`
    whitening photos, then the rest as distractors (written only if `distractors_out`). Each output folder is
    built beside its destination, and all are renamed into place once all are complete, so an interrupted or
    failed run (an unreadable photo, say) leaves none of them.

    Args:
        images: Photo files or folders (searched recursively).
        out: The benchmark folder to create; must not exist or be empty.
        seed: Seed of the split and of every attack.
        originals: How many photos become originals (default: all not reserved for whitening).
        distractors_out: Folder for the photos left over, as distractors for ``copy-detect eval``.
        whitening_out: Folder for `whitening_count` photos to fit the whitening on.
        whitening_count: Photos reserved for whitening.
        strong_per_original: Strong copies per original (at most 99, the two-digit suffix).
        max_side: Downscale originals whose longer side exceeds this (Lanczos) before attacking them.
        jpeg_qualities: The ``jpegqual/<q>`` levels.
        crop_percents: The ``crops/<c>`` levels (percent of the area removed).
        progress: Show a progress bar.
    """
    photos = list_images(images, required=True)
    if whitening_count and whitening_out is None:
        raise ValueError("whitening_count needs whitening_out, the folder to write the whitening photos to")
    if not 1 <= strong_per_original <= 99:
        raise ValueError(f"strong_per_original must lie in 1..99, got {strong_per_original}")
    reserved = whitening_count if whitening_out is not None else 0
    chosen, whitening_photos, distractor_photos = _split_photos(photos, seed, originals, reserved)
    for folder in (out, distractors_out, whitening_out):
        if folder is not None:
            check_output_dir(folder)

    manifest: dict[str, Any] = {
        "generator": "dino copy-detect make-benchmark",
        "seed": seed,
        "jpeg_qualities": list(jpeg_qualities),
        "crop_percents": list(crop_percents),
        "max_side": max_side,
        "originals": {},
        "strong": {},
    }
    with ExitStack() as outputs:
        root = outputs.enter_context(atomic_output_dir(out))
        distractor_folder = _staged_output_dir(outputs, distractors_out)
        whitening_folder = _staged_output_dir(outputs, whitening_out)
        manifest["originals"], manifest["strong"] = _attack_originals(
            chosen, root, seed, strong_per_original, max_side, jpeg_qualities, crop_percents, progress
        )
        if distractor_folder is not None:
            manifest["distractors"] = _plain_set_names(distractor_photos)
        if whitening_folder is not None:
            manifest["whitening"] = _plain_set_names(whitening_photos)
        atomic_write_json(root / MANIFEST_NAME, manifest)
        if distractor_folder is not None:
            _write_plain_set(distractor_photos, distractor_folder, max_side)
        if whitening_folder is not None:
            _write_plain_set(whitening_photos, whitening_folder, max_side)
    return BenchmarkSummary(
        root=Path(out),
        originals=len(chosen),
        strong=len(manifest["strong"]),
        distractors=Path(distractors_out) if distractors_out is not None else None,
        whitening=Path(whitening_out) if whitening_out is not None else None,
    )


def _split_photos(
    photos: Sequence[Path], seed: int, originals: int | None, reserved: int
) -> tuple[list[Path], list[Path], list[Path]]:
    """The originals, the `reserved` whitening photos and the distractors (the rest), each sorted, from the photos
    shuffled with `seed`; `originals` None takes all not reserved.

    Raises:
        ValueError: Fewer than one original, more than 9999, or not enough photos.
    """
    order = np.random.default_rng(seed).permutation(len(photos))
    shuffled = [photos[i] for i in order]
    num_originals = len(photos) - reserved if originals is None else originals
    if not 1 <= num_originals <= min(len(photos) - reserved, 9999):
        raise ValueError(
            f"cannot take {num_originals} originals and {reserved} whitening photos from {len(photos)} images"
        )
    return (
        sorted(shuffled[:num_originals]),
        sorted(shuffled[num_originals : num_originals + reserved]),
        sorted(shuffled[num_originals + reserved :]),
    )


def _staged_output_dir(outputs: ExitStack, folder: str | os.PathLike[str] | None) -> Path | None:
    """`folder` built beside its destination and renamed into place when `outputs` closes; None stays None."""
    return None if folder is None else outputs.enter_context(atomic_output_dir(folder))


def _attack_originals(
    chosen: Sequence[Path],
    root: Path,
    seed: int,
    strong_per_original: int,
    max_side: int | None,
    jpeg_qualities: Sequence[int],
    crop_percents: Sequence[float],
    progress: bool,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Write every original and its attacked versions; returns the manifest's ``originals`` (name -> source) and
    ``strong`` (name -> original and edits) entries."""
    names: dict[str, str] = {}
    strong: dict[str, dict[str, Any]] = {}
    for number, source in enumerate(
        tqdm(chosen, desc="attacking originals", unit="img", disable=not progress), start=1
    ):
        names[f"{number:04d}00.jpg"] = str(source)
        strong.update(
            _attack_original(source, number, root, seed, strong_per_original, max_side, jpeg_qualities, crop_percents)
        )
    return names, strong


def _attack_original(
    source: Path,
    number: int,
    root: Path,
    seed: int,
    strong_per_original: int,
    max_side: int | None,
    jpeg_qualities: Sequence[int],
    crop_percents: Sequence[float],
) -> dict[str, dict[str, Any]]:
    """Write original number `number` and all its attacked versions; returns the strong copies' manifest entries."""
    rng = np.random.default_rng([seed, number])
    image = _limit_side(open_image(source), max_side)
    name = f"{number:04d}00.jpg"
    # Every attack starts from the decoded stored original, as Copydays attacks its released originals.
    image = _jpeg_roundtrip(image, ARCHIVE_QUALITY)
    _save_jpeg(image, root / ORIGINAL_BLOCK / name, ARCHIVE_QUALITY)
    for quality in jpeg_qualities:
        _save_jpeg(image, root / "jpegqual" / str(quality) / name, quality)
    for percent in crop_percents:
        _save_jpeg(crop_area(image, percent, rng), root / "crops" / _level_name(percent) / name, ARCHIVE_QUALITY)
    strong = {}
    for index in range(1, strong_per_original + 1):
        copy, edits = strong_copy(image, rng)
        strong_name = f"{number:04d}{index:02d}.jpg"
        _save_jpeg(copy, root / STRONG_BLOCK / strong_name, STRONG_QUALITY)
        strong[strong_name] = {"original": name, "edits": edits}
    return strong


def _plain_set_names(photos: Sequence[Path]) -> dict[str, str]:
    """File name -> source of distractor or whitening photos, numbered so that same-named sources cannot clash."""
    return {f"{number:04d}_{source.stem}.jpg": str(source) for number, source in enumerate(photos, start=1)}


def _write_plain_set(photos: Sequence[Path], folder: Path, max_side: int | None) -> None:
    """Distractor or whitening photos, re-encoded as JPEG into `folder`."""
    for name, source in zip(_plain_set_names(photos), photos, strict=True):
        _save_jpeg(_limit_side(open_image(source), max_side), folder / name)


def _level_name(level: float) -> str:
    return f"{level:g}"


def _limit_side(image: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _save_jpeg(image: Image.Image, path: Path, quality: int = ARCHIVE_QUALITY) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality)
