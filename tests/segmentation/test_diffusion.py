"""The attention-diffusion foreground (apps.segmentation.diffusion): each piece on hand-made cases, then the whole
method on a synthetic photo with one obvious object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from apps.segmentation.diffusion import (
    MAX_REFINE_PIXELS,
    DiffusionSettings,
    diffuse_attention,
    diffusion_foreground,
    grid_to_photo,
    guided_filter,
    resized_size,
)
from apps.segmentation.inference import iter_attention
from dino.runtime import Runtime


def two_cluster_keys(grid: tuple[int, int], inside: np.ndarray, heads: int = 2, dim: int = 4) -> torch.Tensor:
    """Keys (heads, 1+N, dim) whose patches inside the mask share one direction and the others another, plus a
    large shared component (as DINOv2's keys have) that centring must remove."""
    rng = np.random.default_rng(0)
    n = grid[0] * grid[1]
    base = np.zeros((n, heads * dim))
    base[inside.reshape(-1), 0] = 1.0
    base[~inside.reshape(-1), 1] = 1.0
    base += 5.0 + 0.01 * rng.normal(size=base.shape)
    keys = np.concatenate([np.zeros((1, heads * dim)), base]).reshape(1 + n, heads, dim).transpose(1, 0, 2)
    return torch.from_numpy(keys.copy()).float()


def test_diffusion_spreads_the_prior_over_the_attended_patches_cluster() -> None:
    grid = (6, 8)
    inside = np.zeros(grid, dtype=bool)
    inside[1:5, 2:6] = True
    maps = torch.zeros(2, *grid)
    maps[:, 2, 3] = 1.0  # the [CLS] token attends to one patch of the object only
    scores = diffuse_attention(maps, two_cluster_keys(grid, inside))
    # Every patch of the object now scores above every background patch.
    assert scores[inside].min() > scores[~inside].max()


def test_diffusion_checks_the_grid() -> None:
    with pytest.raises(ValueError, match="keys hold 48 patches but the attention grid is 5×8"):
        diffuse_attention(torch.zeros(2, 5, 8), torch.zeros(2, 49, 4))


def test_resized_size_follows_torchvision_short_side_rule() -> None:
    assert resized_size((480, 854), 480, keep_aspect=True) == (480, 854)
    assert resized_size((300, 451), 224, keep_aspect=True) == (224, 336)  # 224·451/300 = 336.7, truncated
    assert resized_size((451, 300), 224, keep_aspect=True) == (336, 224)
    assert resized_size((300, 451), 224, keep_aspect=False) == (224, 224)


def test_grid_to_photo_maps_the_cropped_input_back() -> None:
    # A 2×3 grid of 2-px patches covers 4×6 of a 5×7 resized input (a row and a column cropped), which is the
    # photo at half size: each patch becomes a 4×4 block, and the cropped strip repeats the last row/column.
    grid = np.array([[0, 1, 0], [1, 0, 1]], dtype=np.float32)
    photo = grid_to_photo(grid, 2, (5, 7), (10, 14), smooth=False)
    assert photo.shape == (10, 14)
    expected = np.kron(grid, np.ones((4, 4)))
    np.testing.assert_array_equal(photo[:8, :12], expected)
    np.testing.assert_array_equal(photo[8:, :12], np.repeat(expected[-1:], 2, axis=0))
    np.testing.assert_array_equal(photo[:8, 12:], np.repeat(expected[:, -1:], 2, axis=1))
    with pytest.raises(ValueError, match="exceeds"):
        grid_to_photo(grid, 4, (5, 7), (10, 14))


def test_guided_filter_keeps_constants_and_edges_of_the_guide() -> None:
    guide = np.zeros((20, 30, 3))
    guide[:, 15:] = 1.0
    np.testing.assert_allclose(guided_filter(guide, np.full((20, 30), 0.3), 3, 1e-3), 0.3, atol=1e-9)
    # A blurry step where the guide has a sharp one comes out sharp: the filter follows the guide's edge.
    blurry = np.clip((np.arange(30) - 10) / 10, 0, 1)[None].repeat(20, axis=0)
    sharp = guided_filter(guide, blurry, 4, 1e-4)
    assert sharp[:, 12].max() < 0.35 and sharp[:, 17].min() > 0.65
    assert np.abs(sharp[:, 13] - sharp[:, 16]).min() > np.abs(blurry[:, 13] - blurry[:, 16]).max()
    with pytest.raises(ValueError, match="guide"):
        guided_filter(guide[..., :1], blurry, 3, 1e-3)


def test_constant_scores_give_an_empty_mask() -> None:
    photo = Image.new("RGB", (28, 28), (120, 120, 120))
    keys = torch.ones(2, 1 + 4, 4)
    mask = diffusion_foreground(torch.full((2, 2, 2), 0.25), keys, photo, 14, (28, 28))
    assert mask.shape == (28, 28) and not mask.any()


@pytest.mark.parametrize("scale", [1, 20])
def test_whole_method_finds_an_obvious_object_at_the_photo_size(scale: int) -> None:
    """A bright disc on a dark textured ground: prior on the disc's centre, keys of two clusters, photo 100×70,
    and the same photo 20 times larger (2000×1400, over MAX_REFINE_PIXELS: refined smaller, mask enlarged)."""
    grid = (5, 7)
    photo_size = (70 * scale, 100 * scale)
    yy, xx = np.mgrid[: photo_size[0], : photo_size[1]] / scale
    disc = (yy - 35) ** 2 + (xx - 50) ** 2 < 22**2
    pixels = np.where(disc[..., None], [230, 200, 40], [30, 60, 30]).astype(np.uint8)
    pixels = np.clip(pixels + np.random.default_rng(1).integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
    photo = Image.fromarray(pixels)
    resized = resized_size(photo_size, 70, keep_aspect=True)  # (70, 100): a 5×7 grid of 14-px patches
    centres_y, centres_x = np.mgrid[: grid[0], : grid[1]] * 14 + 7
    inside = (centres_y - 35) ** 2 + (centres_x - 50) ** 2 < 22**2
    maps = torch.zeros(2, *grid)
    maps[:, 2, 3] = 1.0
    mask = diffusion_foreground(maps, two_cluster_keys(grid, inside), photo, 14, resized, DiffusionSettings())
    assert mask.shape == photo_size
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.85
    assert (photo_size[0] * photo_size[1] > MAX_REFINE_PIXELS) == (scale > 1)


@pytest.mark.slow
def test_a_backbone_runs_end_to_end_on_a_photo_of_another_size() -> None:
    from dino.checkpoint import load_backbone

    model = load_backbone("random:dinov2_vits14_reg")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (75, 100, 3), dtype=np.uint8))
    item = next(
        iter_attention(model, [photo], size=60, keep_aspect=True, runtime=Runtime(device="cpu", progress=False))
    )
    mask = diffusion_foreground(item.maps, item.keys, photo, 14, resized_size((75, 100), 60, keep_aspect=True))
    assert mask.shape == (75, 100) and mask.dtype == bool
