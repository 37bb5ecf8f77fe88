"""One foreground mask per image by a normalized cut of the patch graph (TokenCut, Wang et al., CVPR 2022).

The graph's nodes are the patches; two patches are linked (weight 1) when the cosine similarity of their
last-layer keys exceeds `tau`, and weakly (weight `eps`) otherwise, so the graph stays connected. The
second-smallest generalized eigenvector of (D − W) x = λ D x (the relaxed normalized cut) splits the patches
at its mean. The side holding the patch with the largest |eigenvector| entry is the foreground (TokenCut's
choice: that patch is the most salient one), and only the connected component of that patch is kept.
Choices follow the TokenCut reference code: keys of all heads concatenated, [CLS] dropped, a binarised
graph, 4-connectivity for the components (``scipy.ndimage.label``'s default).

A ResNet has no keys: its dense grid features (``forward_dense``, layer3 by default in this app) are the nodes'
features instead (:func:`ncut_foreground_features`), with the same rule, `tau` and `eps`.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from scipy import ndimage
from scipy.linalg import eigh
from torch import Tensor

from apps.segmentation.defaults import NCUT_EPS, NCUT_TAU

__all__ = [
    "NCUT_EPS",
    "NCUT_MAX_PATCHES",
    "NCUT_TAU",
    "feature_affinity",
    "key_features",
    "ncut_foreground",
    "ncut_foreground_features",
    "patch_affinity",
]

# The generalized eigenproblem is dense N×N and costs O(N³): 3600 patches (the paper's 480×480 input at patch 8,
# a 60×60 grid) take about 20 s on 2 CPU cores and 100 MB; twice as many would take 8 times as long.
NCUT_MAX_PATCHES = 3600


def key_features(keys: Tensor) -> Tensor:
    """A ViT's patch features for the cut: last-layer keys (heads, 1+N, head_dim), [CLS] first, as (N, heads·head_dim),
    the heads concatenated and [CLS] dropped (TokenCut)."""
    return keys[:, 1:].permute(1, 0, 2).reshape(keys.shape[1] - 1, -1)


def feature_affinity(features: Tensor, tau: float = NCUT_TAU, eps: float = NCUT_EPS) -> np.ndarray:
    """Binarised cosine-similarity graph of patch (or grid-cell) features (N, D): (N, N) float64.

    Args:
        features: One row per node.
        tau: Pairs with cosine similarity > tau get weight 1, the others `eps`.
        eps: Weight of the non-edges; keeps every degree positive so D is invertible.
    """
    features = F.normalize(features.double(), p=2, dim=-1)
    similarity = (features @ features.T).cpu().numpy()
    return np.where(similarity > tau, 1.0, eps)


def patch_affinity(keys: Tensor, tau: float = NCUT_TAU, eps: float = NCUT_EPS) -> np.ndarray:
    """Binarised cosine-similarity graph of a ViT's patches from its last-layer keys (heads, 1+N, head_dim), [CLS]
    first: (N, N) float64 (:func:`feature_affinity` of :func:`key_features`)."""
    return feature_affinity(key_features(keys), tau, eps)


def ncut_foreground(keys: Tensor, grid: tuple[int, int], tau: float = NCUT_TAU, eps: float = NCUT_EPS) -> np.ndarray:
    """The foreground patches of one image by a normalized cut of a ViT's key features.

    Args:
        keys: Last-layer keys, (heads, 1+N, head_dim), [CLS] first.
        grid: Patch grid (h, w), h·w = N.
        tau: Edge threshold on the cosine similarity (TokenCut: 0.2).
        eps: Weight of non-edges (TokenCut: 1e-5).

    Returns:
        (h, w) boolean mask: the connected foreground component that holds the most salient patch.

    Raises:
        ValueError: Fewer than 3 patches, or more than :data:`NCUT_MAX_PATCHES`.
    """
    if keys.shape[1] - 1 != grid[0] * grid[1]:
        raise ValueError(f"keys hold {keys.shape[1] - 1} patches but the grid is {grid[0]}×{grid[1]}")
    return ncut_foreground_features(key_features(keys), grid, tau, eps)


def ncut_foreground_features(
    features: Tensor, grid: tuple[int, int], tau: float = NCUT_TAU, eps: float = NCUT_EPS
) -> np.ndarray:
    """The foreground cells of one image by a normalized cut of any dense features: a ViT's keys
    (:func:`key_features`) or a ResNet's grid features, (N, D) in row-major grid order.

    Args and returns: as :func:`ncut_foreground`, with `features` in place of the keys.

    Raises:
        ValueError: Fewer than 3 cells, more than :data:`NCUT_MAX_PATCHES`, or features that do not fit `grid`.
    """
    if features.shape[0] != grid[0] * grid[1]:
        raise ValueError(f"the features hold {features.shape[0]} cells but the grid is {grid[0]}×{grid[1]}")
    if grid[0] * grid[1] < 3:
        raise ValueError(f"a normalized cut needs at least 3 patches, got a {grid[0]}×{grid[1]} grid")
    if grid[0] * grid[1] > NCUT_MAX_PATCHES:
        raise ValueError(
            f"a normalized cut of a {grid[0]}×{grid[1]} patch grid ({grid[0] * grid[1]:,} patches) is over its limit "
            f"of {NCUT_MAX_PATCHES:,}: its eigenproblem grows with the cube; use a smaller --size"
        )
    affinity = feature_affinity(features, tau, eps)
    degree = np.diag(affinity.sum(axis=1))
    _, vectors = eigh(degree - affinity, degree, subset_by_index=[1, 1])
    fiedler = vectors[:, 0]
    partition = fiedler > fiedler.mean()
    seed = int(np.argmax(np.abs(fiedler)))
    if not partition[seed]:
        partition = ~partition
    components, _ = ndimage.label(partition.reshape(grid))
    return components == components.flat[seed]
