"""The normalized-cut foreground on synthetic keys and a synthetic image with an obvious object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from apps.segmentation.inference import iter_attention
from apps.segmentation.ncut import NCUT_EPS, NCUT_MAX_PATCHES, ncut_foreground, patch_affinity
from dino.checkpoint import load_backbone
from dino.runtime import Runtime


def synthetic_keys(object_mask: np.ndarray, heads: int = 2, head_dim: int = 8, noise: float = 0.05) -> torch.Tensor:
    """Keys (heads, 1+N, head_dim): object patches near one direction, background near an orthogonal one."""
    generator = torch.Generator().manual_seed(0)
    dim = heads * head_dim
    foreground, background = torch.zeros(dim), torch.zeros(dim)
    foreground[0], background[1] = 1.0, 1.0
    flat = torch.from_numpy(object_mask.ravel())
    patches = torch.where(flat[:, None], foreground, background)
    patches = patches + noise * torch.randn(patches.shape, generator=generator)
    tokens = torch.cat([torch.randn(1, dim, generator=generator), patches])
    return tokens.reshape(-1, heads, head_dim).permute(1, 0, 2)


def test_affinity_is_binarised_cosine_similarity_without_cls() -> None:
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = True
    affinity = patch_affinity(synthetic_keys(mask))
    assert affinity.shape == (9, 9)
    assert set(np.unique(affinity)) == {NCUT_EPS, 1.0}
    assert affinity[0, 1] == NCUT_EPS and affinity[1, 2] == 1.0


def test_ncut_finds_the_object_patches() -> None:
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:7] = True
    found = ncut_foreground(synthetic_keys(mask), (8, 10))
    np.testing.assert_array_equal(found, mask)


def test_ncut_keeps_only_the_component_of_the_most_salient_patch() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:4, 1:4] = True
    mask[6, 6] = True  # a second, detached object patch with the same features
    found = ncut_foreground(synthetic_keys(mask), (8, 8))
    assert found.sum() in (1, 9)  # one connected component, never both
    assert found[1:4, 1:4].all() or found[6, 6]
    assert not (found & ~mask).any()


def test_ncut_rejects_grid_mismatch() -> None:
    keys = synthetic_keys(np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="grid"):
        ncut_foreground(keys, (2, 4))


def test_ncut_refuses_grids_over_its_limit_before_any_work() -> None:
    grid = (61, 60)  # 3660 patches, just over the paper's 60×60
    assert grid[0] * grid[1] > NCUT_MAX_PATCHES >= 60 * 60
    keys = torch.zeros(1, 1 + grid[0] * grid[1], 2)
    with pytest.raises(ValueError, match=r"61×60 patch grid \(3,660 patches\) is over its limit of 3,600"):
        ncut_foreground(keys, grid)


@pytest.mark.slow
def test_ncut_on_a_synthetic_image_with_random_weights() -> None:
    # A white rectangle on black covering whole patches: even random-init keys separate the two contents.
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    image[32:80, 48:96] = 255
    model = load_backbone("random:vit_tiny/16")
    item = next(
        iter_attention(model, [Image.fromarray(image)], size=128, runtime=Runtime(device="cpu", progress=False))
    )
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:5, 3:6] = True
    np.testing.assert_array_equal(ncut_foreground(item.keys, item.grid), expected)
