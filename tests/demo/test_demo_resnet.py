"""The demo on a ResNet: the Attention tab says it has no attention and shows the normalized-cut mask; every other
tab works as with a ViT. One server on a torchvision ResNet-18 file (random weights: no trained ResNet offline)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]' (or '.[dev]')")
pytest.importorskip("gradio_client", reason="the demo's API tests need gradio_client: pip install -e '.[dev]'")

from demo import adapters  # noqa: E402
from demo.gallery import sample_copy, sample_gallery, sample_video  # noqa: E402
from dino.checkpoint import load_backbone  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]

MAX_VIDEO_FRAMES = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _file(path):
    from gradio_client import handle_file

    return handle_file(str(path))


@pytest.fixture(scope="module")
def resnet_demo(resnet18_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path, str]]:
    """(page, cache folder, url) of the demo serving the ResNet-18 file on a free 127.0.0.1 port."""
    from demo.app import build_demo, launch_demo

    cache = tmp_path_factory.mktemp("resnet-demo-cache")
    page = build_demo(str(resnet18_file), cache_dir=cache, device="cpu", max_video_frames=MAX_VIDEO_FRAMES)
    try:
        url = launch_demo(page, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True, quiet=True)
        yield page, cache, url
    finally:
        page.close()


@pytest.fixture(scope="module")
def resnet_client(resnet_demo):
    from gradio_client import Client

    return Client(resnet_demo[2], verbose=False)


def test_the_page_says_the_resnet_has_no_attention_and_which_grid_it_uses(resnet_demo) -> None:
    page, _, url = resnet_demo
    assert url.startswith("http://127.0.0.1:")
    config = json.dumps(page.config, ensure_ascii=False)
    assert "ResNet-18 has no self-attention, so there are no attention maps to show" in config
    assert "normalized-cut foreground" in config and "layer3 grid" in config
    assert "ResNet-18 with a 512-d pooled feature and no attention" in config  # the weights notice


def test_attention_tab_shows_the_normalized_cut_mask_at_the_photo_size(resnet_client, resnet_demo) -> None:
    cache = resnet_demo[1]
    chelsea = next(path for path in sample_gallery(cache) if path.stem == "skimage-chelsea")
    mean_map, cut, heads, masks = resnet_client.predict(_file(chelsea), 0.6, 224, True, api_name="/attention")
    assert mean_map is None and heads == [] and masks == []
    assert np.asarray(Image.open(cut)).shape[:2] == (300, 451)  # chelsea's own size


def test_search_finds_the_query_itself_first(resnet_client, resnet_demo) -> None:
    rocket = next(path for path in sample_gallery(resnet_demo[1]) if path.stem == "skimage-rocket")
    results = resnet_client.predict(_file(rocket), 3, api_name="/search")
    score, name = results[0]["caption"].split(" · ")
    assert name == "skimage-rocket.jpg" and float(score) == pytest.approx(1.0, abs=1e-3)


def test_copy_check_of_an_image_with_itself_is_a_copy(resnet_client, resnet_demo) -> None:
    original = sample_copy(resnet_demo[1]).original
    similarity, verdict = resnet_client.predict(_file(original), _file(original), api_name="/copy_check")
    assert similarity == pytest.approx(1.0, abs=1e-3) and verdict.startswith("**Copy.**")


def test_video_propagates_on_the_resnet_grid(resnet_client, resnet_demo) -> None:
    clip = sample_video(resnet_demo[1])
    video, notice = resnet_client.predict(_file(clip.video), _file(clip.first_mask), None, api_name="/video")
    path = video["video"] if isinstance(video, dict) else video
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == MAX_VIDEO_FRAMES and notice.startswith(f"{MAX_VIDEO_FRAMES} frames propagated, 1 object(s).")


def test_ncut_adapter_and_attention_adapter_on_a_resnet(resnet18_file: Path) -> None:
    model = load_backbone(resnet18_file)
    model.grid_layer = "layer3"
    assert not adapters.has_attention(model)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8))
    views = adapters.ncut_views(model, photo, 96, device="cpu")
    assert views.mask.shape == (100, 150) and views.grid == (6, 9)
    with pytest.raises(ValueError, match=r"^ResNet-18 has no self-attention"):
        adapters.attention_views(model, photo, 0.6, 96, device="cpu")


def test_search_pools_layer4_while_the_dense_tabs_see_their_own_grid_of_the_same_weights() -> None:
    from demo.app import _grid_views
    from dino.models.resnet import ResNetBackbone

    model = ResNetBackbone(18)
    search, dense = _grid_views(model, None)
    assert search is model and (search.grid_layer, dense.grid_layer) == ("layer4", "layer3")
    assert dense.conv1.weight is model.conv1.weight  # a view, not a copy of the weights
    assert _grid_views(model, "layer4") == (model, model)
    vit = load_backbone("random:vit_tiny/16")
    assert _grid_views(vit, None) == (vit, vit)
    with pytest.raises(ValueError, match="a ViT has one, its patch tokens"):
        _grid_views(vit, "layer3")


def test_the_demo_search_index_uses_the_resnet_descriptor(resnet18_file: Path, tmp_path: Path) -> None:
    """The Search tab's index is GeM over layer4 for a ResNet (the CLI's `dino search index` recipe), not its pooled
    feature standing in for [CLS]."""
    from dino.runtime import Runtime
    from dino.search.descriptors import DescriptorRecipe

    model = load_backbone(resnet18_file)
    photos = []
    for seed in (0, 1):
        photos.append(tmp_path / f"{seed}.png")
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(photos[-1])
    index = adapters.build_search_index(model, photos, runtime=Runtime(device="cpu", progress=False))
    assert index.recipe == DescriptorRecipe.retrieval(backbone=model)
    assert index.recipe.pooling == "gem"
