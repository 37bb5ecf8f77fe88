"""The Holidays average precision of the Copydays protocol (SPEC §12), exactly as the reference computes it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["block_map", "holidays_ap", "positive_ranks"]


def holidays_ap(ranks: Sequence[int], num_positives: int) -> float:
    """Average precision as the area of trapezoids under the precision-recall curve (``score_ap_from_ranks_1``).

    Each true positive found adds a trapezoid of width ``1 / num_positives`` between the precision just before
    it (``ntp / rank``, or 1 at rank 0) and just after it (``(ntp + 1) / (rank + 1)``). Positives that were not
    retrieved add nothing, so they lower the AP through ``num_positives`` alone.

    Args:
        ranks: Increasing 0-based ranks of the true positives that were retrieved.
        num_positives: Number of positives of the query in the whole database (> 0).
    """
    if num_positives <= 0:
        raise ValueError(f"a query needs at least one positive, got {num_positives}")
    recall_step = 1.0 / num_positives
    ap = 0.0
    for true_positives, rank in enumerate(ranks):
        precision_before = 1.0 if rank == 0 else true_positives / rank
        precision_after = (true_positives + 1) / (rank + 1)
        ap += (precision_before + precision_after) * recall_step / 2.0
    return ap


def positive_ranks(retrieved: Sequence[int], positives: Sequence[int]) -> list[int]:
    """The 0-based ranks at which `positives` (database indices) appear in the `retrieved` list."""
    wanted = set(positives)
    return [rank for rank, index in enumerate(retrieved) if index in wanted]


def block_map(retrieved: np.ndarray, positives: Sequence[Sequence[int]]) -> float:
    """Mean Holidays AP of a block of queries.

    Args:
        retrieved: (Q, k) database indices, best first (the reference's top-20 ``indices``).
        positives: Per query, the database indices of its positives.
    """
    if len(retrieved) != len(positives):
        raise ValueError(f"{len(retrieved)} result lists for {len(positives)} queries")
    aps = [
        holidays_ap(positive_ranks(row, wanted), len(wanted)) for row, wanted in zip(retrieved, positives, strict=True)
    ]
    return float(np.mean(aps))
