"""The Holidays AP of the Copydays protocol (SPEC §12) on hand-built rankings."""

from __future__ import annotations

import numpy as np
import pytest

from apps.copy_detection.metrics import block_map, holidays_ap, positive_ranks


def reference_score_ap_from_ranks_1(ranks, nres):
    """eval_copy_detection.py's score_ap_from_ranks_1, transcribed line by line."""
    ap = 0.0
    recall_step = 1.0 / nres
    for ntp, rank in enumerate(ranks):
        if rank == 0:
            precision_0 = 1.0
        else:
            precision_0 = ntp / float(rank)
        precision_1 = (ntp + 1) / float(rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


@pytest.mark.parametrize(
    ("ranks", "num_positives", "expected"),
    [
        # The single positive first: a trapezoid of height 1 (1 before, 1/1 after) and width 1.
        ([0], 1, 1.0),
        # The single positive second: heights 0/1 before and 1/2 after, width 1 -> (0 + 0.5) / 2 = 0.25.
        # (Not 0.5 as the usual AP: the trapezoid rule starts from precision 0 at rank 1.)
        ([1], 1, 0.25),
        # Ranks 0 and 2 of 2 positives: (1 + 1)/2 · 1/2 + (1/2 + 2/3)/2 · 1/2 = 1/2 + 7/24 = 19/24.
        ([0, 2], 2, 19 / 24),
        # One of two positives found, at rank 3: (0/3 + 1/4)/2 · 1/2 = 1/16.
        ([3], 2, 1 / 16),
        # Nothing found: 0, whatever the number of positives.
        ([], 3, 0.0),
        # Ranks 0, 1 of 3 positives (third outside the top 20): 1/3 + (1/1 + 2/2)/2 · 1/3 = 2/3.
        ([0, 1], 3, 2 / 3),
    ],
)
def test_holidays_ap_hand_computed(ranks, num_positives, expected) -> None:
    assert holidays_ap(ranks, num_positives) == pytest.approx(expected, abs=1e-12)


def test_holidays_ap_matches_reference_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        num_positives = int(rng.integers(1, 6))
        found = int(rng.integers(0, num_positives + 1))
        ranks = sorted(rng.choice(20, size=found, replace=False).tolist())
        assert holidays_ap(ranks, num_positives) == reference_score_ap_from_ranks_1(ranks, num_positives)


def test_holidays_ap_needs_positives() -> None:
    with pytest.raises(ValueError, match="at least one positive"):
        holidays_ap([], 0)


def test_positive_ranks_and_block_map() -> None:
    retrieved = np.array([[4, 0, 7], [2, 3, 1], [5, 6, 9]])
    positives = [[0], [2, 1], [8]]
    assert positive_ranks(retrieved[0], positives[0]) == [1]
    assert positive_ranks(retrieved[1], positives[1]) == [0, 2]
    # Query 0: rank 1 of 1 positive -> 0.25. Query 1: ranks 0, 2 of 2 -> 19/24. Query 2: not found -> 0.
    assert block_map(retrieved, positives) == pytest.approx((0.25 + 19 / 24 + 0.0) / 3)
    with pytest.raises(ValueError, match="result lists"):
        block_map(retrieved, positives[:2])
