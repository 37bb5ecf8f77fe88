"""The in-memory attention views: what `dino attention` draws its figures from and what the demo shows."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from apps.segmentation.inference import iter_attention
from apps.segmentation.visualize import attention_views, photo_attention_views, save_attention_figures
from dino.checkpoint import load_backbone
from dino.data.masks import read_indexed_png
from dino.runtime import Runtime

HEADS = 3  # vit_tiny


@pytest.fixture(scope="module")
def model():
    return load_backbone("random:vit_tiny/16").eval()


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))  # 80×60


def test_photo_views_hold_the_network_input_and_the_photo_sized_mask(model, photo) -> None:
    views = photo_attention_views(model, photo, threshold=0.5, size=32, device="cpu")
    # Short side 32, aspect kept: 42×32, cropped to whole patches: 32×32.
    assert views.image.shape == (32, 32, 3)
    assert views.head_maps.shape == views.head_masks.shape == (HEADS, 32, 32)
    assert views.head_masks.dtype == bool and views.mean_map.shape == (32, 32)
    assert views.head_colors.shape == (HEADS, 3)
    assert views.foreground.shape == views.photo.shape[:2] == (60, 80)
    for overlay in (views.head_overlay(1), views.heads_overlay()):
        assert overlay.shape == (32, 32, 3) and 0 <= overlay.min() and overlay.max() <= 1
    assert views.foreground_overlay().shape == (60, 80, 3)


def test_photo_views_without_the_foreground_mask(model, photo) -> None:
    views = photo_attention_views(model, photo, threshold=0.5, size=32, foreground=False, device="cpu")
    assert views.photo is None and views.foreground is None and views.foreground_overlay() is None


def test_the_figures_draw_the_same_views(model, photo, tmp_path) -> None:
    photo.save(tmp_path / "photo.png")
    (folder,) = save_attention_figures(
        model,
        [tmp_path / "photo.png"],
        tmp_path / "out",
        0.5,
        32,
        keep_aspect=True,
        runtime=Runtime(device="cpu", progress=False),
    )
    views = photo_attention_views(model, photo, threshold=0.5, size=32, device="cpu")
    assert np.array_equal(read_indexed_png(folder / "mask.png"), views.foreground.astype(np.uint8))
    assert np.asarray(Image.open(folder / "attn-head0.png")).shape[:2] == views.head_maps[0].shape


def test_the_foreground_mask_needs_the_resized_size(model, photo) -> None:
    item = next(iter_attention(model, [photo], size=32, runtime=Runtime(device="cpu", progress=False)))
    with pytest.raises(ValueError, match="resized size"):
        attention_views(item, 0.5, model.patch_size, photo)
