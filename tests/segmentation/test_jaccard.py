"""The paper's Jaccard on hand-made masks, void handling included."""

from __future__ import annotations

import numpy as np
import pytest

from apps.segmentation.jaccard import VOID, best_mask_jaccard, jaccard


def test_jaccard_hand_made() -> None:
    prediction = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    target = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    assert jaccard(prediction, target) == pytest.approx(2 / 4)
    assert jaccard(target, target) == 1.0
    assert jaccard(~target, target) == 0.0
    assert jaccard(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_void_count_versus_ignore() -> None:
    prediction = np.array([[1, 1, 1, 0]], dtype=bool)
    target = np.array([[1, 0, 0, 0]], dtype=bool)
    void = np.array([[0, 1, 0, 0]], dtype=bool)
    # count: the prediction on void is a false positive -> 1 / 3; ignore: void leaves the union -> 1 / 2.
    assert jaccard(prediction, target, void, "count") == pytest.approx(1 / 3)
    assert jaccard(prediction, target, void, "ignore") == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="void mode"):
        jaccard(prediction, target, void, "drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shapes"):
        jaccard(prediction, target.T)


def test_best_head_per_object_then_mean_over_objects() -> None:
    labels = np.array(
        [
            [1, 1, 0, 2],
            [1, 1, 0, 2],
            [0, 0, 0, VOID],
        ],
        dtype=np.uint8,
    )
    head0 = labels == 1  # object 1 exactly
    head1 = (labels == 2) | (labels == VOID)  # object 2 plus the void pixel
    head2 = np.ones_like(head0)
    score = best_mask_jaccard(np.stack([head0, head1, head2]), labels, "count")
    assert score.object_ids == [1, 2]
    assert score.best_mask == [0, 1]
    assert score.per_object == pytest.approx([1.0, 2 / 3])
    assert score.mean == pytest.approx((1 + 2 / 3) / 2)
    ignored = best_mask_jaccard(np.stack([head0, head1, head2]), labels, "ignore")
    assert ignored.per_object == pytest.approx([1.0, 1.0])


def test_image_without_objects_has_nan_mean() -> None:
    labels = np.zeros((2, 2), dtype=np.uint8)
    score = best_mask_jaccard(np.ones((1, 2, 2), dtype=bool), labels)
    assert score.object_ids == [] and np.isnan(score.mean)
    with pytest.raises(ValueError, match="do not match"):
        best_mask_jaccard(np.ones((1, 3, 2), dtype=bool), labels)
