"""The paper's Jaccard between ground-truth objects and predicted masks (SPEC §10, dino issue #54).

For each ground-truth object of an image, the IoU against every candidate mask (every head's thresholded
attention in the paper) is computed and the best one kept; the image's score is the mean over its objects,
and the dataset's score the mean over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dino.data.masks import mask_iou

__all__ = ["BACKGROUND", "VOID", "ImageJaccard", "VoidMode", "best_mask_jaccard", "jaccard"]

# PASCAL VOC label conventions: 0 is background, 255 the "void" border/difficult region.
BACKGROUND = 0
VOID = 255

VoidMode = Literal["ignore", "count"]


def jaccard(
    prediction: np.ndarray, target: np.ndarray, void: np.ndarray | None = None, mode: VoidMode = "count"
) -> float:
    """IoU |P ∩ T| / |P ∪ T| of two boolean masks of the same shape.

    Args:
        prediction: Predicted mask.
        target: Ground-truth mask (void pixels must not be in it).
        void: Void pixels, or None.
        mode: ``count`` (the authors' snippet): predicted pixels on void are false positives;
            ``ignore``: void pixels are left out of both the intersection and the union.

    Returns:
        The IoU in [0, 1]; 1.0 when both masks are empty (nothing to find, nothing predicted).
    """
    if mode not in ("ignore", "count"):
        raise ValueError(f"unknown void mode {mode!r}; choose ignore or count")
    if void is not None and mode == "ignore":
        prediction = prediction.astype(bool) & ~void
    return mask_iou(prediction, target)


@dataclass
class ImageJaccard:
    """Scores of one image.

    Attributes:
        object_ids: Ground-truth ids scored, ascending.
        per_object: Best IoU of each object over the candidate masks.
        best_mask: Index of the candidate mask (the head, for per-head masks) that gave each best IoU.
    """

    object_ids: list[int]
    per_object: list[float]
    best_mask: list[int]

    @property
    def mean(self) -> float:
        """Mean over the image's objects (NaN for an image without objects)."""
        return float(np.mean(self.per_object)) if self.per_object else float("nan")


def best_mask_jaccard(candidates: np.ndarray, labels: np.ndarray, void_mode: VoidMode = "count") -> ImageJaccard:
    """Best IoU over candidate masks for each ground-truth object of one image.

    Args:
        candidates: (K, H, W) boolean masks (K heads, or K = 1 for single-mask methods).
        labels: (H, W) integer label map: 0 background, 255 void, any other value an object (or class) id.
        void_mode: How void pixels count, see :func:`jaccard`.
    """
    if candidates.ndim != 3 or candidates.shape[1:] != labels.shape:
        raise ValueError(f"candidates {candidates.shape} do not match labels {labels.shape}")
    void = labels == VOID
    object_ids = [int(i) for i in np.unique(labels) if i not in (BACKGROUND, VOID)]
    per_object, best = [], []
    for object_id in object_ids:
        target = labels == object_id
        scores = [jaccard(mask, target, void, void_mode) for mask in candidates]
        best.append(int(np.argmax(scores)))
        per_object.append(float(scores[best[-1]]))
    return ImageJaccard(object_ids, per_object, best)
