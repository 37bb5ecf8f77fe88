"""make-benchmark: the Copydays layout from any photos, byte-identical for a seed, every attack as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.copy_detection.generate import STRONG_EDITS, crop_area, make_benchmark, strong_copy
from dino.cli import main
from dino.data.io import ImageLoadError, list_images


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_bytes(photos: Path, tmp_path: Path) -> None:
    def build(seed: int, name: str) -> dict[str, bytes]:
        make_benchmark(
            [photos],
            tmp_path / name / "bench",
            seed=seed,
            originals=3,
            distractors_out=tmp_path / name / "distractors",
            whitening_out=tmp_path / name / "whitening",
            whitening_count=1,
        )
        return _tree_bytes(tmp_path / name)

    first, again, other = build(7, "a"), build(7, "b"), build(8, "c")
    assert first == again
    assert len(first) == 1 + 3 * (1 + 3 + 9 + 9) + 1 + 1  # manifest, 3 originals × 22 files, 1 distractor, 1 whitening
    # Another seed splits and attacks differently: the strong copies cannot all coincide.
    strong = [name for name in first if name.startswith("bench/strong/")]
    assert any(first[name] != other.get(name) for name in strong)


def test_split_and_manifest(photos: Path, tmp_path: Path) -> None:
    summary = make_benchmark(
        [photos],
        tmp_path / "bench",
        seed=1,
        originals=2,
        distractors_out=tmp_path / "distractors",
        whitening_out=tmp_path / "whitening",
        whitening_count=2,
        strong_per_original=1,
    )
    assert (summary.originals, summary.strong) == (2, 2)
    manifest = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    sources = list(manifest["originals"].values()) + list(manifest["distractors"].values())
    sources += list(manifest["whitening"].values())
    # The five photos are split without overlap into 2 originals, 2 whitening photos and 1 distractor.
    assert sorted(sources) == sorted(str(p) for p in list_images(photos))
    assert len(list_images(tmp_path / "distractors")) == 1
    assert len(list_images(tmp_path / "whitening")) == 2
    for name, strong in manifest["strong"].items():
        assert name[:4] == strong["original"][:4]
        assert len(strong["edits"]) == 2 and set(strong["edits"]) <= set(STRONG_EDITS)


def test_jpeg_levels_are_reencodes_of_the_original(photos: Path, tmp_path: Path) -> None:
    make_benchmark([photos], tmp_path / "bench", seed=0, originals=1, strong_per_original=1)
    original = np.asarray(Image.open(tmp_path / "bench" / "original" / "000100.jpg"), dtype=np.float64)
    errors = []
    for quality in (3, 30, 75):
        copy = np.asarray(Image.open(tmp_path / "bench" / "jpegqual" / str(quality) / "000100.jpg"), dtype=np.float64)
        assert copy.shape == original.shape
        errors.append(np.abs(copy - original).mean())
    assert errors[0] > errors[1] > errors[2]  # lower quality, larger error


@pytest.mark.parametrize("percent", [10, 50, 80])
def test_crop_removes_the_requested_area(percent: int) -> None:
    image = Image.new("RGB", (400, 300))
    rng = np.random.default_rng(0)
    for _ in range(5):
        cropped = crop_area(image, percent, rng)
        removed = 1 - cropped.width * cropped.height / (400 * 300)
        assert removed == pytest.approx(percent / 100, abs=0.01)
        assert cropped.width / cropped.height == pytest.approx(4 / 3, rel=0.02)


def test_every_strong_edit_changes_the_photo() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 48), Image.BICUBIC)
    for name, edit in STRONG_EDITS.items():
        edited = edit(photo, np.random.default_rng(1))
        assert edited.mode == "RGB", name
        if edited.size == photo.size:
            assert np.abs(np.asarray(edited, np.int16) - np.asarray(photo, np.int16)).mean() > 1, name
    copy, edits = strong_copy(photo, np.random.default_rng(2), edits_per_copy=3)
    assert len(edits) == 3 and list(edits) == [e for e in STRONG_EDITS if e in edits]  # canonical order


def test_refuses_to_overwrite(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="bench"):
        make_benchmark([photos], tmp_path / "bench", seed=0)
    with pytest.raises(ValueError, match="originals"):
        make_benchmark([photos], tmp_path / "other", seed=0, originals=9)
    assert not (tmp_path / "other").exists()


def test_an_unreadable_photo_leaves_no_output_folder(photos: Path, tmp_path: Path) -> None:
    """The distractor folder used to be renamed into place before the whitening photos were read: a bad one among
    them left it behind, and the rerun refused it as an existing folder."""
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    outputs = {"out": tmp_path / "bench", "distractors_out": tmp_path / "dist", "whitening_out": tmp_path / "white"}
    for seed in range(6):  # the broken photo lands among the originals, the whitening photos or the distractors
        with pytest.raises(ImageLoadError, match=r"broken\.jpg: cannot decode image"):
            make_benchmark([photos], seed=seed, originals=1, whitening_count=1, strong_per_original=1, **outputs)
        assert sorted(tmp_path.iterdir()) == [photos], seed
    (photos / "broken.jpg").unlink()
    summary = make_benchmark([photos], seed=0, originals=1, whitening_count=1, strong_per_original=1, **outputs)
    assert summary.originals == 1 and len(list_images(tmp_path / "dist")) == 3


def test_help_renders_percent_signs(capsys) -> None:
    """`--help` printed "80 %%": the description is not %-formatted, so it must hold a single %."""
    with pytest.raises(SystemExit):
        main(["copy-detect", "make-benchmark", "--help"])
    text = capsys.readouterr().out
    assert "80 % of the area" in " ".join(text.split()) and "%%" not in text
