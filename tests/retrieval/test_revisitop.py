"""revisitop mAP and mP@k on hand-built rankings, against hand computation and an independent implementation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from apps.retrieval.evaluate import rank_database
from apps.retrieval.revisitop import compute_ap, compute_map, evaluate_protocols, load_dataset, protocol_ground_truth


def test_issue_example_gives_0625() -> None:
    ranks = np.array([[0, 1], [1, 0], [2, 2], [3, 3]])  # (n_db, n_queries), as revisitop
    gnd = [{"ok": [0, 2], "junk": [1]}, {"ok": [0], "junk": []}]
    mean_ap, aps, mean_pr, prs = compute_map(ranks, gnd, [1, 5, 10])
    # Query 0: ranking 0,1,2,3; junk 1 is dropped so the positives sit at 0 and 1: AP = 1.
    # Query 1: ranking 1,0,…; the positive is second: AP = (0/1 + 1/2) / 2 = 0.25.
    assert mean_ap == pytest.approx(0.625)
    np.testing.assert_allclose(aps, [1.0, 0.25])
    # P@k with k capped at the last positive's (1-based, junk-free) position: q0 [1, 1, 1], q1 [0, 1/2, 1/2].
    np.testing.assert_allclose(prs, [[1, 1, 1], [0, 0.5, 0.5]])
    np.testing.assert_allclose(mean_pr, [0.5, 0.75, 0.75])


def test_queries_without_positives_are_skipped() -> None:
    ranks = np.array([[0, 0], [1, 1]])
    mean_ap, aps, _, prs = compute_map(ranks, [{"ok": [1]}, {"ok": [], "junk": [0]}], [1])
    assert mean_ap == pytest.approx(0.25) and np.isnan(aps[1]) and np.isnan(prs[1, 0])


def test_compute_ap_trapezoids() -> None:
    # Positives at junk-free positions 1 and 3 out of 2: ((0 + 1/2) + (1/3 + 2/4)) / 2 / 2.
    assert compute_ap(np.array([1, 3]), 2) == pytest.approx((0.5 + 1 / 3 + 0.5) / 4)
    # A positive never retrieved lowers AP through nres only.
    assert compute_ap(np.array([0]), 2) == pytest.approx(0.5)


def _independent_ap(ranking: np.ndarray, ok: set[int], junk: set[int]) -> float:
    """AP by filtering junk out of the ranked list, then trapezoids between consecutive recall levels."""
    kept = [image for image in ranking if image not in junk]
    ap, found = 0.0, 0
    for position, image in enumerate(kept):
        if image in ok:
            before = found / position if position else 1.0
            found += 1
            ap += (before + found / (position + 1)) / 2 / len(ok)
    return ap


def test_compute_map_matches_an_independent_implementation() -> None:
    rng = np.random.default_rng(0)
    n_db, n_queries = 60, 25
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_queries)], axis=1)
    gnd = []
    for _ in range(n_queries):
        chosen = rng.permutation(n_db)
        gnd.append({"ok": chosen[: rng.integers(1, 8)], "junk": chosen[10 : 10 + rng.integers(0, 6)]})
    expected = [_independent_ap(ranks[:, q], set(g["ok"].tolist()), set(g["junk"].tolist())) for q, g in enumerate(gnd)]
    mean_ap, aps, _, _ = compute_map(ranks, gnd, [1, 5, 10])
    np.testing.assert_allclose(aps, expected, rtol=1e-12)
    assert mean_ap == pytest.approx(np.mean(expected))


def test_protocols_compose_easy_hard_junk() -> None:
    gnd = [{"easy": [0], "hard": [1], "junk": [2], "bbx": [0, 0, 1, 1]}]
    easy, medium, hard = (protocol_ground_truth(gnd, p)[0] for p in ("easy", "medium", "hard"))
    assert easy["ok"].tolist() == [0] and sorted(easy["junk"].tolist()) == [1, 2]
    assert sorted(medium["ok"].tolist()) == [0, 1] and medium["junk"].tolist() == [2]
    assert hard["ok"].tolist() == [1] and sorted(hard["junk"].tolist()) == [0, 2]
    # Ranking 2 (junk), 1 (hard), 0 (easy), 3.
    results = evaluate_protocols(np.array([[2], [1], [0], [3]]), gnd)
    assert results["easy"]["mAP"] == pytest.approx(1.0)  # 1 and 2 are junk: the easy positive comes first
    assert results["hard"]["mAP"] == pytest.approx(1.0)
    assert results["medium"]["mAP"] == pytest.approx(1.0)
    assert results["medium"]["mP@k"] == {"1": 1.0, "5": 1.0, "10": 1.0}


def test_rank_database_is_reference_argsort() -> None:
    database = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    queries = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert rank_database(database, queries).tolist() == [[2, 0], [1, 1], [0, 2]]


def test_load_dataset_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"gnd_roxford5k.pkl: no such file; expected the revisitop layout"):
        load_dataset(tmp_path, "roxford5k")
    folder = tmp_path / "evil"
    folder.mkdir()

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    (folder / "gnd_evil.pkl").write_bytes(pickle.dumps({"imlist": Payload()}))
    with pytest.raises(ValueError, match="not a revisitop ground-truth pickle .*refusing to load posix.getcwd"):
        load_dataset(tmp_path, "evil")
    # The original Oxford5k/Paris6k ground truth has ok/junk lists only: refused at load, before any image is read.
    (folder / "gnd_evil.pkl").write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["a"], "gnd": [{"ok": [0]}]}))
    with pytest.raises(ValueError, match=r"gnd_evil.pkl: the ground truth of query 0 has no easy, hard, junk list"):
        load_dataset(tmp_path, "evil")
    entry = {"easy": [0], "hard": [], "junk": []}
    (folder / "gnd_evil.pkl").write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["a"], "gnd": [entry]}))
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of evil are missing under .*jpg, e.g. .*a.jpg"):
        load_dataset(tmp_path, "evil")


def test_load_dataset_reads_numpy_arrays(tmp_path) -> None:
    folder = tmp_path / "np"
    (folder / "jpg").mkdir(parents=True)
    (folder / "jpg" / "a.jpg").write_bytes(b"")
    gnd = [{"easy": np.array([0]), "hard": np.array([], dtype=np.int64), "junk": [], "bbx": np.array([0.0, 0, 1, 1])}]
    (folder / "gnd_np.pkl").write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["a"], "gnd": gnd}))
    dataset = load_dataset(tmp_path, "np")
    assert dataset.database == [folder / "jpg" / "a.jpg"] and dataset.gnd[0]["easy"].tolist() == [0]
