"""The Copydays evaluation: whitening, search and scoring as the reference (SPEC §12), calibration, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.copy_detection.copydays import CopydaysLayout, QueryBlock, read_copydays
from apps.copy_detection.evaluate import (
    CopydaysDescriptors,
    calibrate_threshold,
    calibrate_verification,
    describe_copydays,
    score_copydays,
)
from apps.copy_detection.generate import make_benchmark
from apps.copy_detection.verify import SiftFeatureExtractor
from dino import cli
from dino.checkpoint import load_backbone
from dino.data.io import list_images
from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe, finalize_descriptors
from dino.search.whitening import Whitening
from tests.copy_detection.test_metrics import reference_score_ap_from_ranks_1


def reference_whiten_and_normalize(
    database: np.ndarray, queries: np.ndarray, features: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """eval_copy_detection.py's whitening block and normalisation, transcribed (CPU tensors for cuda ones)."""
    database, queries, features = map(torch.from_numpy, (database.copy(), queries.copy(), features))
    mean_feature = torch.mean(features, dim=0)
    database -= mean_feature
    queries -= mean_feature
    cov = torch.mm(features.T, features) / features.shape[0]  # uncentred, as the reference
    d, v = np.linalg.eigh(cov.numpy())  # utils.PCA.train_pca(cov), dim = all, whit = 0.5
    eps = d.max() * 1e-5
    d[d < eps] = eps
    idx = np.argsort(d)[::-1][: database.shape[-1]]
    dvt = torch.from_numpy(np.dot(np.diag(1.0 / d[idx] ** 0.5), v[:, idx].T)).float()
    database = torch.mm(dvt, database.transpose(0, 1)).transpose(0, 1)  # utils.PCA.apply
    queries = torch.mm(dvt, queries.transpose(0, 1)).transpose(0, 1)
    return torch.nn.functional.normalize(database, dim=1, p=2), torch.nn.functional.normalize(queries, dim=1, p=2)


def _toy_benchmark(rng: np.random.Generator) -> tuple[CopydaysLayout, CopydaysDescriptors, np.ndarray]:
    """3 originals + 4 distractors; queries: the originals, 4 strong copies, a 1:1 block; 12 whitening rows."""
    names = [Path(f"original/{i}.jpg") for i in range(3)]
    layout = CopydaysLayout(
        root=Path("toy"),
        originals=tuple(names),
        blocks=(
            QueryBlock("original", tuple(names), ((0,), (1,), (2,))),
            QueryBlock("strong", tuple(Path(f"strong/{i}.jpg") for i in range(4)), ((0,), (0, 1), (1,), (2,))),
            QueryBlock("jpegqual/3", tuple(Path(f"jpegqual/3/{i}.jpg") for i in range(3)), ((0,), (1,), (2,))),
        ),
    )
    database = rng.normal(size=(7, 6)).astype(np.float32) + 0.5
    strong = database[[0, 1, 1, 2]] + rng.normal(scale=1.0, size=(4, 6)).astype(np.float32)
    jpeg = database[:3] + rng.normal(scale=0.8, size=(3, 6)).astype(np.float32)
    queries = np.concatenate([database[:3], strong, jpeg])
    whitening_set = rng.normal(size=(12, 6)).astype(np.float32) * np.linspace(0.5, 3, 6, dtype=np.float32) + 1.0
    return layout, CopydaysDescriptors(database=database, queries=queries, distractors=4), whitening_set


def test_whitening_is_applied_as_the_reference() -> None:
    rng = np.random.default_rng(0)
    _, descriptors, whitening_set = _toy_benchmark(rng)
    expected_db, expected_q = reference_whiten_and_normalize(descriptors.database, descriptors.queries, whitening_set)
    whitening = Whitening.fit(whitening_set)
    np.testing.assert_allclose(finalize_descriptors(descriptors.database, whitening), expected_db, atol=1e-5)
    np.testing.assert_allclose(finalize_descriptors(descriptors.queries, whitening), expected_q, atol=1e-5)
    # Centring the covariance is an option, and it does change the result here (the mean is far from 0).
    centred = finalize_descriptors(descriptors.queries, Whitening.fit(whitening_set, centered=True))
    assert not np.allclose(centred, expected_q, atol=1e-3)


@pytest.mark.parametrize("whitened", [False, True])
def test_scores_match_the_reference_pipeline(whitened: bool) -> None:
    rng = np.random.default_rng(1)
    layout, descriptors, whitening_set = _toy_benchmark(rng)
    blocks, _ = score_copydays(layout, descriptors, Whitening.fit(whitening_set) if whitened else None)

    if whitened:
        database, queries = reference_whiten_and_normalize(descriptors.database, descriptors.queries, whitening_set)
    else:
        database = torch.nn.functional.normalize(torch.from_numpy(descriptors.database), dim=1)
        queries = torch.nn.functional.normalize(torch.from_numpy(descriptors.queries), dim=1)
    # The reference keeps the top 20; this database has 7 images, so all of them.
    _, indices = torch.mm(queries, database.T).topk(7, largest=True, sorted=True)
    start = 0
    for block, result in zip(layout.blocks, blocks, strict=True):
        aps = []
        for row, positives in zip(indices[start : start + len(block)].tolist(), block.positives, strict=True):
            ranks = [rank for rank, index in enumerate(row) if index in positives]
            aps.append(reference_score_ap_from_ranks_1(ranks, len(positives)))
        start += len(block)
        assert result.block == block.name and result.queries == len(block)
        assert result.mAP == pytest.approx(sum(aps) / len(aps), abs=1e-9)
    assert blocks[0].mAP == 1.0  # an original finds itself first


def test_calibrate_threshold_hand_computed() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    is_copy = np.array([True, False, True, False])
    # Accepting ≥0.9: P 1, R 1/2, F1 2/3. ≥0.8: P 1/2, R 1/2, F1 1/2.
    # ≥0.7: P 2/3, R 1, F1 4/5. ≥0.1: P 1/2, R 1, F1 2/3.
    best = calibrate_threshold(scores, is_copy)
    assert (best.threshold, best.criterion) == (0.7, "max_f1")
    assert (best.precision, best.recall, best.f1) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (best.positives, best.negatives) == (2, 2)
    precise = calibrate_threshold(scores, is_copy, min_precision=0.95)
    assert (precise.threshold, precise.precision, precise.recall) == (0.9, 1.0, 0.5)
    # Tied scores are accepted together: at 0.5 both pairs are in, so precision is 1/2 at best.
    tied = calibrate_threshold(np.array([0.5, 0.5]), np.array([True, False]))
    assert (tied.threshold, tied.precision, tied.recall) == (0.5, 0.5, 1.0)
    with pytest.raises(ValueError, match="no threshold"):
        calibrate_threshold(np.array([0.5, 0.5]), np.array([True, False]), min_precision=0.9)


@pytest.mark.slow
def test_eval_cli_end_to_end(photos: Path, tmp_path: Path, capsys) -> None:
    bench, distractors, whitening = tmp_path / "bench", tmp_path / "distractors", tmp_path / "whitening"
    make = ["copy-detect", "make-benchmark", "--images", str(photos), "--out", str(bench), "--originals", "2"]
    make += ["--distractors-out", str(distractors), "--whitening-out", str(whitening), "--whitening-count", "2"]
    assert cli.main(make + ["--strong-per-original", "1"]) == 0
    common = ["--weights", "random:vit_tiny/16", "--size", "32", "--device", "cpu", "--workers", "0", "--no-progress"]
    argv = ["copy-detect", "eval", "--copydays", str(bench), "--distractors", str(distractors)] + common
    out = tmp_path / "result.json"
    saved = ["--whitening", str(whitening), "--save-whitening", str(tmp_path / "w.npz"), "--out", str(out)]
    assert cli.main(argv + saved) == 0
    printed = capsys.readouterr().out
    assert "strong" in printed and "copy threshold (max_f1)" in printed
    result = json.loads(out.read_text())
    blocks = {row["block"]: row for row in result["blocks"]}
    assert len(blocks) == 20 and blocks["strong"]["queries"] == 2 and blocks["crops/80"]["queries"] == 2
    assert blocks["original"]["mAP"] == 1.0
    assert all(0.0 <= row["mAP"] <= 1.0 for row in result["blocks"])
    assert result["database"] == {"originals": 2, "distractors": 1}
    assert result["whitening"]["images"] == 2 and result["whitening"]["centered"] is False
    assert result["recipe"]["pooling"] == "cls+gem" and result["recipe"]["size"] == 32

    # The saved whitening gives the same scores as fitting it again; --verify adds find --verify's calibration.
    again = tmp_path / "again.json"
    verify = ["--verify", "sift", "--candidates", "2"]
    assert cli.main(argv + ["--whitening", str(tmp_path / "w.npz"), "--out", str(again)] + verify) == 0
    assert "verified matches (sift, 2 candidates, max_f1)" in capsys.readouterr().out
    rerun = json.loads(again.read_text())
    assert rerun["blocks"] == result["blocks"] and result["verification"] is None
    verification = rerun["verification"]
    assert (verification["verifier"], verification["candidates"]) == ("sift", 2)
    # 38 queries (2 strong, 18 JPEG, 18 crops), one positive each, against a database of 3 images.
    assert (verification["calibration"]["positives"], verification["calibration"]["negatives"]) == (38, 76)
    # A missing benchmark is a user error (exit 2), not a traceback.
    assert cli.main(["copy-detect", "eval", "--copydays", str(tmp_path / "nope")] + common) == 2


@pytest.mark.slow
def test_calibrate_verification_verifies_only_the_shortlist(photos: Path, tmp_path: Path) -> None:
    bench, distractors = tmp_path / "bench", tmp_path / "distractors"
    make_benchmark(sorted(photos.iterdir()), bench, seed=0, originals=2, distractors_out=distractors)
    layout = read_copydays(bench)
    database_images = list(layout.originals) + list_images(distractors)
    extractor = DescriptorExtractor(load_backbone("random:vit_tiny/16"), DescriptorRecipe.copy_detection(32))
    descriptors = describe_copydays(layout, extractor, list_images(distractors))
    described: list[str] = []
    sift = SiftFeatureExtractor()

    def local(path):
        described.append(str(path))
        return sift(path)

    calibration, inliers = calibrate_verification(layout, descriptors, database_images, local, 1, progress=False)
    queries = len(layout.queries) - len(layout.originals)
    assert inliers.shape == (queries, len(database_images))
    # One candidate per query is verified; the rest score -1, and copies outside the shortlist are misses.
    assert ((inliers >= 0).sum(axis=1) == 1).all() and set(np.unique(inliers[inliers < 0])) == {-1.0}
    assert calibration.positives == queries and calibration.recall <= 1.0
    # Every query is described once, every database image at most once (kept for the next queries).
    assert all(described.count(str(path)) == 1 for path in layout.queries[len(layout.originals) :])
    assert all(described.count(str(path)) <= 1 for path in database_images)
    assert len(described) <= queries + len(database_images)
    with pytest.raises(ValueError, match="database images for"):
        calibrate_verification(layout, descriptors, database_images[:-1], local, 1)
