"""One foreground mask per image by a normalized cut of the patch graph (TokenCut, Wang et al., CVPR 2022).

The graph's nodes are the patches; two patches are linked (weight 1) when the cosine similarity of their
last-layer keys exceeds `tau`, and weakly (weight `eps`) otherwise, so the graph stays connected. The
second-smallest generalized eigenvector of (D − W) x = λ D x (the relaxed normalized cut) splits the patches
at its mean. The side holding the patch with the largest |eigenvector| entry is the foreground (TokenCut's
choice: that patch is the most salient one), and only the connected component of that patch is kept.
Choices follow the TokenCut reference code: keys of all heads concatenated, [CLS] dropped, a binarised
graph, 4-connectivity for the components (``scipy.ndimage.label``'s default).
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from scipy import ndimage
from scipy.linalg import eigh
from torch import Tensor

from apps.segmentation.defaults import NCUT_EPS, NCUT_TAU

__all__ = ["NCUT_EPS", "NCUT_MAX_PATCHES", "NCUT_TAU", "ncut_foreground", "patch_affinity"]

# The generalized eigenproblem is dense N×N and costs O(N³): 3600 patches (the paper's 480×480 input at patch 8,
# a 60×60 grid) take about 20 s on 2 CPU cores and 100 MB; twice as many would take 8 times as long.
NCUT_MAX_PATCHES = 3600


def patch_affinity(keys: Tensor, tau: float = NCUT_TAU, eps: float = NCUT_EPS) -> np.ndarray:
    """Binarised cosine-similarity graph of the patches, (N, N) float64.

    Args:
        keys: Last-layer keys of one image, (heads, 1+N, head_dim), [CLS] first.
        tau: Pairs with cosine similarity > tau get weight 1, the others `eps`.
        eps: Weight of the non-edges; keeps every degree positive so D is invertible.
    """
    features = keys[:, 1:].permute(1, 0, 2).reshape(keys.shape[1] - 1, -1).double()
    features = F.normalize(features, p=2, dim=-1)
    similarity = (features @ features.T).cpu().numpy()
    return np.where(similarity > tau, 1.0, eps)


def ncut_foreground(keys: Tensor, grid: tuple[int, int], tau: float = NCUT_TAU, eps: float = NCUT_EPS) -> np.ndarray:
    """The foreground patches of one image by a normalized cut of its key features.

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
    if grid[0] * grid[1] < 3:
        raise ValueError(f"a normalized cut needs at least 3 patches, got a {grid[0]}×{grid[1]} grid")
    if grid[0] * grid[1] > NCUT_MAX_PATCHES:
        raise ValueError(
            f"a normalized cut of a {grid[0]}×{grid[1]} patch grid ({grid[0] * grid[1]:,} patches) is over its limit "
            f"of {NCUT_MAX_PATCHES:,}: its eigenproblem grows with the cube; use a smaller --size"
        )
    affinity = patch_affinity(keys, tau, eps)
    degree = np.diag(affinity.sum(axis=1))
    _, vectors = eigh(degree - affinity, degree, subset_by_index=[1, 1])
    fiedler = vectors[:, 0]
    partition = fiedler > fiedler.mean()
    seed = int(np.argmax(np.abs(fiedler)))
    if not partition[seed]:
        partition = ~partition
    components, _ = ndimage.label(partition.reshape(grid))
    return components == components.flat[seed]
