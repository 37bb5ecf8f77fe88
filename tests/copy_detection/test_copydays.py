"""Reading the Copydays layout: blocks and sizes from the folders, positives by prefix (strong) or 1:1 (SPEC §12)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from apps.copy_detection.copydays import read_copydays
from apps.copy_detection.generate import CROP_PERCENTS, JPEG_QUALITIES, make_benchmark


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)


def test_reader_on_a_generated_tree(photos: Path, tmp_path: Path) -> None:
    make_benchmark([photos], tmp_path / "bench", seed=3, originals=4, strong_per_original=2)
    layout = read_copydays(tmp_path / "bench")
    names = [block.name for block in layout.blocks]
    assert names == (
        ["original", "strong"] + [f"jpegqual/{q}" for q in JPEG_QUALITIES] + [f"crops/{c}" for c in CROP_PERCENTS]
    )
    assert [p.name for p in layout.originals] == ["000100.jpg", "000200.jpg", "000300.jpg", "000400.jpg"]
    strong = layout.block("strong")
    assert len(strong) == 8
    assert [p.name for p in strong.images][:3] == ["000101.jpg", "000102.jpg", "000201.jpg"]
    assert strong.positives == ((0,), (0,), (1,), (1,), (2,), (2,), (3,), (3,))
    for name in names[2:]:
        block = layout.block(name)
        assert [p.name for p in block.images] == [p.name for p in layout.originals]
        assert block.positives == ((0,), (1,), (2,), (3,))
    assert len(layout.queries) == 4 + 8 + 18 * 4


def test_reader_reads_sizes_levels_and_shared_prefixes(tmp_path: Path) -> None:
    # Copydays-like names: two originals of the series "2000", one of "2100"; blocks of any size and any levels.
    _touch_images(tmp_path / "original", ["200000.jpg", "200050.jpg", "210000.jpg"])
    _touch_images(tmp_path / "strong", ["200001.jpg", "200002.jpg", "200051.jpg", "210003.jpg", "210004.png"])
    for level in ("10", "3", "5"):
        _touch_images(tmp_path / "jpegqual" / level, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "jpegqual" / "5" / "notes.txt").write_text("not an image")
    layout = read_copydays(tmp_path)
    # Levels in numeric order (3, 5, 10), no crops folder at all, non-images ignored.
    assert [block.name for block in layout.blocks] == ["original", "strong", "jpegqual/3", "jpegqual/5", "jpegqual/10"]
    strong = layout.block("strong")
    # A strong query's positives: every original sharing its first 4 characters.
    assert strong.positives == ((0, 1), (0, 1), (0, 1), (2,), (2,))
    assert len(layout.block("jpegqual/5")) == 3
    with pytest.raises(KeyError, match="crops/10"):
        layout.block("crops/10")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda root: _touch_images(root / "jpegqual" / "3", ["a.jpg"]), "1:1"),
        (lambda root: _touch_images(root / "strong", ["999901.jpg"]), "no original shares"),
        (lambda root: _touch_images(root / "crops" / "big", ["a.jpg", "b.jpg"]), "named by a number"),
        (lambda root: (root / "crops" / "10").mkdir(parents=True), "holds no images"),
    ],
)
def test_reader_rejects_broken_layouts(tmp_path: Path, build, message: str) -> None:
    _touch_images(tmp_path / "original", ["000100.jpg", "000200.jpg"])
    build(tmp_path)
    with pytest.raises(ValueError, match=message):
        read_copydays(tmp_path)


def test_reader_needs_originals(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="original"):
        read_copydays(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such Copydays folder"):
        read_copydays(tmp_path / "missing")
