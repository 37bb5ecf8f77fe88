"""The DAVIS folder layout (SPEC §11, §20): sequence lists, frames and annotations.

DAVIS-2017 keeps ``ImageSets/<year>/<split>.txt`` (one sequence name a line), ``JPEGImages/<resolution>/<sequence>/
*.jpg`` and ``Annotations/<resolution>/<sequence>/*.png`` (indexed PNGs, read by :mod:`dino.data.masks`); the
shared DAVIS-2016 dev subset is laid out the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DAVIS_RESOLUTION",
    "davis_annotations",
    "davis_first_annotation",
    "davis_frames",
    "davis_sequences",
]

DAVIS_RESOLUTION = "480p"


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


def davis_first_annotation(root: str | os.PathLike[str], sequence: str, resolution: str = DAVIS_RESOLUTION) -> Path:
    """The annotation of a sequence's first frame, the one semi-supervised propagation starts from (the reference
    reads the PNG of the first JPEG's name; another annotated frame would give its labels to the first frame).

    Raises:
        FileNotFoundError: No frames, or no annotation named like the first frame.
    """
    first = davis_frames(root, sequence, resolution)[0]
    annotation = Path(root) / "Annotations" / resolution / sequence / f"{first.stem}.png"
    if not annotation.is_file():
        raise FileNotFoundError(f"{annotation}: no annotation of the sequence's first frame {first.name}")
    return annotation


def _sorted_files(folder: Path, suffix: str) -> list[Path]:
    files = sorted(folder.glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"{folder}: no {suffix} files")
    return files
