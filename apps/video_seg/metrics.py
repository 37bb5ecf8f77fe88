"""DAVIS region similarity J and boundary accuracy F, as davis2017-evaluation computes them (SPEC §11).

Semantics copied on purpose, edge cases included: J (:func:`dino.data.masks.mask_iou`) of two empty masks is
1; F uses 1-pixel boundary maps (`seg2bmap`) dilated by a disk of radius ceil(0.008·‖(H, W)‖₂) with OpenCV;
empty prediction vs non-empty GT gives P=1, R=0, and so on; per-object statistics are nan-mean, recall at 0.5
and the decay between the first and last of four frame bins, whose edges are cast to uint8 as in the original.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.morphology import disk

__all__ = ["BOUNDARY_FRACTION", "Statistics", "boundary_f_measure", "seg2bmap", "statistics"]

# SPEC §11: the boundary tolerance is 0.008 of the image diagonal.
BOUNDARY_FRACTION = 0.008
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary map of a boolean mask, offset half a pixel towards the origin (D. Martin, 2003)."""
    seg = mask.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = seg ^ east | seg ^ south | seg ^ south_east
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = 0
    return boundary


def boundary_f_measure(
    ground_truth: np.ndarray, prediction: np.ndarray, bound_fraction: float = BOUNDARY_FRACTION
) -> float:
    """Boundary F-measure of a predicted boolean mask against the ground truth (``f_measure``)."""
    radius = bound_fraction if bound_fraction >= 1 else math.ceil(bound_fraction * np.linalg.norm(prediction.shape))
    structuring = disk(radius).astype(np.uint8)
    predicted_boundary = seg2bmap(prediction)
    true_boundary = seg2bmap(ground_truth)
    predicted_dilated = cv2.dilate(predicted_boundary.astype(np.uint8), structuring)
    true_dilated = cv2.dilate(true_boundary.astype(np.uint8), structuring)
    n_predicted = np.sum(predicted_boundary)
    n_true = np.sum(true_boundary)
    if n_predicted == 0 and n_true > 0:
        precision, recall = 1.0, 0.0
    elif n_predicted > 0 and n_true == 0:
        precision, recall = 0.0, 1.0
    elif n_predicted == 0 and n_true == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(predicted_boundary * true_dilated) / float(n_predicted)
        recall = np.sum(true_boundary * predicted_dilated) / float(n_true)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


@dataclass(frozen=True)
class Statistics:
    """Per-object statistics over frames: mean, recall (fraction above 0.5) and decay."""

    mean: float
    recall: float
    decay: float


def statistics(per_frame: np.ndarray) -> Statistics:
    """``db_statistics``: nan-mean, recall at 0.5 and decay = mean(first quarter) − mean(last quarter).

    The quarter edges are ``round(linspace(1, n, 5)) − 1`` cast to uint8 as in the original (so they wrap
    for sequences longer than 256 evaluated frames, like the official numbers would).
    """
    values = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():  # all-NaN slices give NaN, as in the original
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > RECALL_THRESHOLD)
        edges = (np.round(np.linspace(1, len(values), DECAY_BINS + 1) + 1e-10) - 1).astype(np.uint8)
        bins = [values[edges[i] : edges[i + 1] + 1] for i in range(DECAY_BINS)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[-1])
    return Statistics(float(mean), float(recall), float(decay))
