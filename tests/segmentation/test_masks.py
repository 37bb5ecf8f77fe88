"""Thresholding, upsampling and head merging against the reference and hand-built attention (SPEC §10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from apps.segmentation.masks import (
    attention_transform,
    cls_attention_maps,
    mean_attention,
    merge_heads,
    threshold_attention,
    upsample_nearest,
)


def reference_threshold(attentions: torch.Tensor, threshold: float, grid: tuple[int, int], patch: int) -> np.ndarray:
    """visualize_attention.py's code, verbatim apart from names: attentions is (heads, N)."""
    nh = attentions.shape[0]
    val, idx = torch.sort(attentions)
    val /= torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - threshold)
    idx2 = torch.argsort(idx)
    for head in range(nh):
        th_attn[head] = th_attn[head][idx2[head]]
    th_attn = th_attn.reshape(nh, grid[0], grid[1]).float()
    return F.interpolate(th_attn.unsqueeze(0), scale_factor=patch, mode="nearest")[0].numpy()


@pytest.mark.parametrize("threshold", [0.6, 0.8, 0.3])
def test_threshold_matches_reference_code(threshold: float) -> None:
    grid, patch = (5, 7), 8
    logits = torch.randn(2, 6, 1 + 35, 1 + 35) * 3
    attention = logits.softmax(dim=-1)
    maps = cls_attention_maps(attention, grid)
    ours = upsample_nearest(threshold_attention(maps, threshold), patch)
    for image in range(2):
        expected = reference_threshold(attention[image, :, 0, 1:].clone(), threshold, grid, patch)
        np.testing.assert_array_equal(ours[image].numpy(), expected.astype(bool))


def test_hand_built_head_keeps_smallest_set_reaching_the_mass() -> None:
    # Sorted ascending 0.1, 0.1, 0.3, 0.5 -> cumulative 0.1, 0.2, 0.5, 1.0; > 0.4 keeps 0.3 and 0.5 (0.8 of
    # the mass): 0.5 alone (0.5) would not reach 0.6.
    maps = torch.tensor([[[0.5, 0.1], [0.3, 0.1]]])
    expected = torch.tensor([[[True, False], [True, False]]])
    torch.testing.assert_close(threshold_attention(maps, 0.6), expected)
    # Scaling does not matter (the reference renormalises: rows do not sum to 1 without CLS→CLS).
    torch.testing.assert_close(threshold_attention(maps * 0.37, 0.6), expected)
    assert threshold_attention(maps, 0.5).sum() == 1  # 0.5 exactly: cumulative 0.5 > 0.5 is false, keeps top only
    assert threshold_attention(maps, 1.0).all()


def test_kept_set_is_minimal_on_random_maps() -> None:
    maps = torch.rand(50, 6, 6) ** 3
    masks = threshold_attention(maps, 0.6)
    for values, kept in zip(maps.flatten(1), masks.flatten(1), strict=True):
        share = values / values.sum()
        assert share[kept].sum() >= 0.6
        assert share[kept].sum() - share[kept].min() < 0.6  # drop the weakest kept patch: not enough
        assert share[kept].min() >= share[~kept].max()  # the kept ones are the top patches


def test_threshold_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="threshold"):
        threshold_attention(torch.rand(2, 2), 1.5)


def test_cls_attention_maps_takes_cls_row_without_cls_column() -> None:
    attention = torch.arange(2 * 3 * 7 * 7, dtype=torch.float32).reshape(2, 3, 7, 7)
    maps = cls_attention_maps(attention, (2, 3))
    assert maps.shape == (2, 3, 2, 3)
    torch.testing.assert_close(maps[1, 2].flatten(), attention[1, 2, 0, 1:])


def test_upsample_nearest_repeats_each_patch() -> None:
    grid = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(upsample_nearest(grid, 3).numpy(), np.kron(grid.numpy(), np.ones((3, 3))))
    masks = torch.tensor([[[True, False]]])
    up = upsample_nearest(masks, 2)
    assert up.dtype == torch.bool and up.shape == (1, 2, 4)


def test_merge_heads() -> None:
    maps = torch.tensor([[[0.9, 0.1], [0.0, 0.0]], [[0.0, 0.1], [0.0, 0.9]]])
    masks = threshold_attention(maps, 0.6)
    assert merge_heads(maps, masks, "best").shape == (2, 2, 2)
    union = merge_heads(maps, masks, "merged")
    np.testing.assert_array_equal(union[0].numpy(), [[True, False], [False, True]])
    mean = merge_heads(maps, masks, "mean", threshold=0.6)
    torch.testing.assert_close(mean[0], threshold_attention(mean_attention(maps), 0.6))
    with pytest.raises(ValueError, match="head merge"):
        merge_heads(maps, masks, "max")  # type: ignore[arg-type]


@pytest.mark.parametrize("patch", [16, 14, 8])
def test_attention_transform_square_and_keep_aspect(patch: int) -> None:
    image = Image.new("RGB", (300, 200))
    square = attention_transform(patch)(image)
    side = 480 - 480 % patch
    assert square.shape == (3, side, side)
    aspect = attention_transform(patch, size=240, keep_aspect=True)(image)
    assert aspect.shape == (3, 240 - 240 % patch, 360 - 360 % patch)
