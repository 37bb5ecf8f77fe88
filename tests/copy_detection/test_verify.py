"""Geometric verification: mutual matches, RANSAC on hand-built correspondences, local features, find --verify."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.copy_detection.defaults import CALIBRATIONS, DEFAULT_MIN_INLIERS, DEFAULT_VERIFIER
from apps.copy_detection.find import (
    build_copy_index,
    calibrated_min_inliers,
    calibration_for,
    find_copies,
)
from apps.copy_detection.verify import (
    PatchTokenExtractor,
    SiftFeatureExtractor,
    affine_inliers,
    count_inliers,
    make_local_extractor,
    mutual_nearest_neighbours,
)
from dino import cli
from dino.checkpoint import load_backbone
from dino.runtime import Runtime

OPTIONS = Runtime(device="cpu", num_workers=0, progress=False)


def textured_photo(seed: int, width: int = 96, height: int = 64) -> Image.Image:
    """Random 4×4-pixel blocks: every patch looks different, as in a detailed photo."""
    noise = np.random.default_rng(seed).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize((width, height), Image.Resampling.NEAREST)


def test_affine_inliers_are_exactly_the_mapped_points() -> None:
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (30, 2))
    rotation_scale = np.array([[0.9, -0.3], [0.3, 0.9]])
    target = source @ rotation_scale.T + np.array([5.0, -7.0])
    # The last 10 correspondences are moved 30 to 60 px away from where the map puts them.
    target[20:] += rng.uniform(30, 60, (10, 2)) * rng.choice([-1, 1], (10, 2))
    mask = affine_inliers(source, target, tolerance=1.0)
    assert mask.tolist() == [True] * 20 + [False] * 10
    assert affine_inliers(source, target, tolerance=1.0, seed=5).tolist() == mask.tolist()


def test_affine_inliers_need_three_points_that_span_the_plane() -> None:
    assert not affine_inliers(np.zeros((2, 2)), np.zeros((2, 2)), tolerance=1.0).any()
    line = np.stack([np.arange(10.0), 2 * np.arange(10.0)], axis=1)  # collinear: no affine map is determined
    assert not affine_inliers(line, line, tolerance=1.0).any()


def test_mutual_nearest_neighbours_keep_only_pairs_that_choose_each_other() -> None:
    a = np.array([[1, 0, 0], [0, 1, 0], [0.8, 0.6, 0]], dtype=np.float32)
    b = np.array([[1, 0, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float32)
    # a0 <-> b0 (cos 1); a1's best is b2 (0.8) and b2's best is a2 (0.96), so a1 is unmatched; a2's best is b2.
    rows, columns = mutual_nearest_neighbours(a, b)
    assert rows.tolist() == [0, 2] and columns.tolist() == [0, 2]
    # Computed in blocks of rows, the answer is the same, also on many random vectors.
    for block_entries in (1, 3, 4):
        assert [x.tolist() for x in mutual_nearest_neighbours(a, b, max_entries=block_entries)] == [[0, 2], [0, 2]]
    rng = np.random.default_rng(0)
    many_a, many_b = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(200, 8)).astype(np.float32)
    whole = mutual_nearest_neighbours(many_a, many_b)
    blocked = mutual_nearest_neighbours(many_a, many_b, max_entries=200 * 7)
    assert len(whole[0]) > 20 and all(np.array_equal(x, y) for x, y in zip(whole, blocked, strict=True))


def test_local_features_are_patch_centres_in_original_pixels() -> None:
    model = load_backbone("random:vit_tiny/16")
    extractor = PatchTokenExtractor(model, sides=(32, 64), runtime=Runtime(device="cpu"))
    assert extractor.block == 6
    features = extractor(textured_photo(0, 64, 32))
    # Side 32: 2×1 patches of 32×32 original pixels; side 64: 4×2 patches of 16×16.
    assert features.descriptors.shape == (10, 192) and features.descriptors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(features.descriptors.astype(np.float32), axis=1), 1, atol=1e-3)
    expected = [(16, 16), (48, 16)] + [(8 + 16 * x, 8 + 16 * y) for y in range(2) for x in range(4)]
    np.testing.assert_allclose(features.positions, expected)
    assert features.size == (64, 32)
    # Every token of an image matches itself, at the same place: all are inliers of the identity.
    assert count_inliers(features, features) == 10
    with pytest.raises(ValueError, match="at least one patch"):
        PatchTokenExtractor(model, sides=(8,))


def test_sift_features_survive_rotation_and_map_back_to_original_pixels() -> None:
    photo = textured_photo(0, 192, 128)
    sift = SiftFeatureExtractor()
    features = sift(photo)
    assert len(features.positions) > 50 and features.size == (192, 128)
    np.testing.assert_allclose(np.linalg.norm(features.descriptors.astype(np.float32), axis=1), 1, atol=1e-2)
    rotated = sift(photo.rotate(90, expand=True))  # SIFT is rotation invariant; the patch tokens are not
    assert count_inliers(rotated, features) > 4 * count_inliers(sift(textured_photo(1, 192, 128)), features)
    # Detection on a shrunk copy: positions are still in the original's pixels.
    shrunk = SiftFeatureExtractor(max_side=96)(photo)
    assert shrunk.size == (192, 128) and shrunk.positions[:, 0].max() > 96
    assert len(sift(Image.new("RGB", (64, 64), "grey")).positions) == 0
    assert count_inliers(sift(Image.new("RGB", (64, 64), "grey")), features) == 0
    with pytest.raises(ValueError, match="unknown verifier 'orb'"):
        make_local_extractor("orb", load_backbone("random:vit_tiny/16"))
    assert DEFAULT_VERIFIER in DEFAULT_MIN_INLIERS
    assert set(CALIBRATIONS["dino_vitt16_cpu"].min_inliers) == {"dino", "sift"}


def test_thresholds_follow_the_backbone_and_uncalibrated_verifiers_are_refused() -> None:
    tiny, imgfocus = load_backbone("random:vit_tiny/16"), load_backbone("random:vit_tiny/16")
    tiny.provenance = replace(tiny.provenance, source="dino_vitt16_cpu")
    imgfocus.provenance = replace(imgfocus.provenance, source="dinov2_vits14_imgfocus")
    assert calibration_for(tiny).threshold == 0.985 and calibrated_min_inliers(tiny, "dino") == 42
    assert calibration_for(imgfocus) == calibration_for(load_backbone("random:vit_tiny/16"))  # the default's
    assert calibrated_min_inliers(imgfocus, "sift") == 58
    with pytest.raises(ValueError, match="--verify dino has no calibrated minimum.*--min-inliers"):
        calibrated_min_inliers(imgfocus, "dino")


@pytest.fixture
def textured(tmp_path: Path) -> tuple[Path, Path]:
    """An indexed folder of 3 textured photos, and a query that re-encodes photo0 as JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        textured_photo(seed).save(folder / f"photo{seed}.png")
    query = tmp_path / "photo0_copy.jpg"
    Image.open(folder / "photo0.png").save(query, quality=90)
    return folder, query


@pytest.mark.slow
def test_find_with_verification(textured: tuple[Path, Path], tmp_path: Path) -> None:
    folder, query = textured
    model = load_backbone("random:vit_tiny/16")
    index = build_copy_index([folder], model, size=64, runtime=OPTIONS)
    everything = find_copies([query], index, model, verify="dino", min_inliers=0, runtime=OPTIONS)[0]
    assert [Path(hit.path).name for hit in everything][0] == "photo0.png"
    best, *others = everything
    assert best.inliers > 2 * max(hit.inliers for hit in others)
    assert [hit.inliers for hit in everything] == sorted((hit.inliers for hit in everything), reverse=True)
    # The global threshold does not apply with verification; the inlier count decides.
    kept = find_copies([query], index, model, threshold=2.0, verify="dino", min_inliers=best.inliers, runtime=OPTIONS)[
        0
    ]
    assert [hit.path for hit in kept] == [best.path]
    assert all(hit.inliers is None for hit in find_copies([query], index, model, threshold=-1, runtime=OPTIONS)[0])

    (folder / "photo1.png").unlink()
    with pytest.raises(FileNotFoundError, match="photo1.png: indexed image not found"):
        find_copies([query], index, model, verify="sift", runtime=OPTIONS)


@pytest.mark.slow
def test_find_verify_cli(textured: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    folder, query = textured
    runtime = ["--device", "cpu", "--workers", "0", "--no-progress"]
    argv = ["copy-detect", "index", str(folder), "--out", str(tmp_path / "index"), "--size", "64"]
    assert cli.main(argv + ["--weights", "random:vit_tiny/16"] + runtime) == 0
    out = tmp_path / "copies.json"
    argv = ["copy-detect", "find", str(query), "--index", str(tmp_path / "index"), "--verify", "--min-inliers", "0"]
    assert cli.main(argv + ["--out", str(out)] + runtime) == 0
    assert " matches  " in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["verify"] == DEFAULT_VERIFIER and result["min_inliers"] == 0 and "threshold" not in result
    copies = result["results"][0]["copies"]
    assert Path(copies[0]["path"]).name == "photo0.png" and copies[0]["inliers"] > copies[1]["inliers"]
