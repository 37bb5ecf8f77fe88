"""[CLS] attention maps, the reference's cumulative-mass threshold and nearest upsampling (SPEC §10)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode

from apps.segmentation.defaults import DEFAULT_THRESHOLD, REFERENCE_IMAGE_SIZE
from dino.data.transforms import ImageTransform, short_side_transform, square_transform

__all__ = [
    "DEFAULT_THRESHOLD",
    "REFERENCE_IMAGE_SIZE",
    "HeadMerge",
    "attention_transform",
    "cls_attention_maps",
    "mean_attention",
    "merge_heads",
    "threshold_attention",
    "upsample_nearest",
]

HeadMerge = Literal["best", "merged", "mean"]


def attention_transform(patch_size: int, size: int = REFERENCE_IMAGE_SIZE, keep_aspect: bool = False) -> ImageTransform:
    """The reference preprocessing: bilinear resize to size×size, normalise, crop bottom/right to a multiple
    of the patch size. With `keep_aspect` the short side is resized to `size` instead (aspect ratio kept)."""
    if keep_aspect:
        return short_side_transform(size, patch_size, interpolation=InterpolationMode.BILINEAR)
    return square_transform(size, interpolation=InterpolationMode.BILINEAR, patch_size=patch_size)


def cls_attention_maps(attention: Tensor, grid: tuple[int, int]) -> Tensor:
    """The [CLS] query's attention to the patches as grids.

    Args:
        attention: Last-layer attention, (..., heads, 1+N, 1+N).
        grid: Patch grid (h, w) with h·w = N.

    Returns:
        (..., heads, h, w). Rows do not sum to one: the CLS→CLS entry is dropped, as in the reference.
    """
    maps = attention[..., 0, 1:]
    return maps.reshape(*maps.shape[:-1], *grid)


def threshold_attention(maps: Tensor, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """Keep, per map, the highest-attention patches that hold a fraction `threshold` of the mass (SPEC §10).

    Exactly the reference: sort ascending, divide by the sum, cumulative sum, keep entries whose cumulative
    value is > 1 − threshold, and put the result back in patch order. The kept set is the smallest set of
    top patches whose mass reaches `threshold` (the boundary patch included).

    Args:
        maps: Non-negative attention, (..., h, w); each (h, w) map is thresholded on its own.
        threshold: Fraction of the mass to keep, in [0, 1].

    Returns:
        Boolean masks of the same shape.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    flat = maps.flatten(-2).float()
    values, order = torch.sort(flat, dim=-1)
    values = values / values.sum(dim=-1, keepdim=True)
    kept_sorted = torch.cumsum(values, dim=-1) > (1 - threshold)
    kept = torch.zeros_like(kept_sorted).scatter_(-1, order, kept_sorted)
    return kept.reshape(maps.shape)


def upsample_nearest(grids: Tensor, patch_size: int) -> Tensor:
    """Upsample (..., h, w) patch grids ×patch_size with nearest interpolation, as the reference does for
    both masks and heatmaps. Boolean input gives boolean output."""
    leading = grids.shape[:-2]
    flat = grids.reshape(1, -1, *grids.shape[-2:]).float()
    up = F.interpolate(flat, scale_factor=patch_size, mode="nearest")
    up = up.reshape(*leading, *up.shape[-2:])
    return up.bool() if grids.dtype == torch.bool else up.to(grids.dtype)


def mean_attention(maps: Tensor) -> Tensor:
    """Mean over heads of (..., heads, h, w) maps, as in ``video_generation.py``."""
    return maps.mean(dim=-3)


def merge_heads(maps: Tensor, head_masks: Tensor, how: HeadMerge, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """Candidate masks of one image for the Jaccard, from its per-head maps (heads, h, w).

    Args:
        maps: Per-head attention grids (heads, h, w).
        head_masks: Their thresholded masks (heads, h, w), boolean.
        how: ``best``: every head's mask (the paper; the Jaccard keeps the best head per object);
            ``merged``: one mask, the union of the heads' masks; ``mean``: one mask, the mean-over-heads map
            thresholded with the same cumulative-mass rule.
        threshold: Mass kept by ``mean``.

    Returns:
        (K, h, w) boolean masks: K = heads for ``best``, 1 otherwise.
    """
    if how == "best":
        return head_masks
    if how == "merged":
        return head_masks.any(dim=0, keepdim=True)
    if how == "mean":
        return threshold_attention(mean_attention(maps), threshold)[None]
    raise ValueError(f"unknown head merge {how!r}; choose best, merged or mean")
