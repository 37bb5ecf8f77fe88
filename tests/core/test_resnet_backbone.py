"""The ResNet backbone's contract with the rest of the project: the dense grid (layer4 or layer3, channels-last),
its size, `load_backbone` on every ResNet source, and `FeatureExtractor` on a ResNet (SPEC §23, §24).

Reference values come from torchvision on identical weights: its ResNet with ``fc = Identity`` (DINO's
``main_dino.py``) for the pooled feature, and its ``IntermediateLayerGetter`` for the layer3 / layer4 grids.
"""

from __future__ import annotations

import urllib.error
from dataclasses import replace

import pytest
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

from dino.checkpoint import CheckpointError, load_backbone, model_identity, weights_sha256
from dino.checksums import state_dict_sha256
from dino.features import FeatureExtractor, TokenBudgetError
from dino.hub.releases import RESNET_RELEASES, WeightsUnavailableError
from dino.models.backbone import is_resnet
from dino.models.resnet import ResNetBackbone
from dino.runtime import Runtime


def torchvision_weights(depth: int, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision ResNet's backbone keys with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return {key: value for key, value in model.state_dict().items() if not key.startswith("fc.")}


def torchvision_resnet(depth: int, weights: dict[str, torch.Tensor]) -> torchvision.models.ResNet:
    model = getattr(torchvision.models, f"resnet{depth}")()
    model.fc = torch.nn.Identity()
    model.load_state_dict(weights)
    return model.eval()


@pytest.fixture(scope="module")
def weights50() -> dict[str, torch.Tensor]:
    return torchvision_weights(50, seed=3)


@pytest.fixture(scope="module")
def weights18() -> dict[str, torch.Tensor]:
    return torchvision_weights(18, seed=4)


@pytest.fixture
def file18(weights18, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(weights18, path)
    return path


def test_pooled_feature_and_grids_are_torchvisions(weights50, tmp_path) -> None:
    torch.save(weights50, tmp_path / "r50.pth")
    model = load_backbone(tmp_path / "r50.pth")
    reference = torchvision_resnet(50, weights50)
    grids = IntermediateLayerGetter(reference, {"layer3": "layer3", "layer4": "layer4"}).eval()
    images = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected_pooled, expected = reference(images), grids(images)
        pooled, layer4 = model.forward_dense(images)
        model.grid_layer = "layer3"
        pooled3, layer3 = model.forward_dense(images)
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=0)
    torch.testing.assert_close(pooled3, expected_pooled, rtol=0, atol=0)
    assert layer4.shape == (2, 3, 4, 2048) and layer3.shape == (2, 5, 7, 1024)
    torch.testing.assert_close(layer4, expected["layer4"].permute(0, 2, 3, 1), rtol=0, atol=0)
    torch.testing.assert_close(layer3, expected["layer3"].permute(0, 2, 3, 1), rtol=0, atol=0)


@pytest.mark.parametrize("side", [1, 31, 32, 33, 63, 65, 97, 224, 225])
def test_grid_size_is_the_conv_stacks_output_size(side: int) -> None:
    model = ResNetBackbone(18).eval()
    height, width = side, 2 * side + 5
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, height, width))
    model.grid_layer = "layer4"
    assert model.grid_size(height, width) == tuple(features.layer4.shape[-2:])
    model.grid_layer = "layer3"
    assert model.grid_size(height, width) == tuple(features.layer3.shape[-2:])


def test_grid_layer_sets_stride_and_width_and_refuses_others() -> None:
    model = ResNetBackbone(18)
    assert (model.grid_layer, model.patch_size, model.grid_dim, model.embed_dim) == ("layer4", 32, 512, 512)
    model.grid_layer = "layer3"
    assert (model.patch_size, model.grid_dim, model.embed_dim) == (16, 256, 512)
    with pytest.raises(ValueError, match=r"grid_layer must be one of \('layer3', 'layer4'\), got 'layer2'"):
        model.grid_layer = "layer2"  # type: ignore[assignment]
    assert model.grid_layer == "layer3"


def test_a_resnet_file_loads_through_load_backbone_and_reloads_from_its_identity(weights18, file18) -> None:
    model = load_backbone(file18)
    assert is_resnet(model) and model.depth == 18 and not model.training
    assert model.provenance.source == str(file18)
    assert model.provenance.description == f"ResNet-18 weights file {file18}"
    expected = ResNetBackbone(18)
    expected.load_state_dict(weights18)
    assert model.provenance.sha256 == state_dict_sha256(expected) == weights_sha256(model)
    identity = model_identity(model)
    assert (identity["arch"], identity["patch_size"], identity["embed_dim"]) == ("resnet18", 32, 512)
    model.grid_layer = "layer3"
    identity = model_identity(model)
    again = load_backbone(identity["weights"], arch=identity["arch"], patch_size=identity["patch_size"])
    assert again.grid_layer == "layer3" and model_identity(again) == identity


def test_requests_a_resnet_cannot_meet_are_refused_in_one_line(file18) -> None:
    for options, expected in (
        ({"arch": "resnet50"}, "weights are arch='resnet18' but arch='resnet50' was requested"),
        ({"arch": "vit_small"}, "weights are arch='resnet18' but arch='vit_small' was requested"),
        ({"patch_size": 8}, "a ResNet.s grid has a stride of 32 \\(layer4\\) or 16 \\(layer3\\), not patch_size=8"),
        ({"pos_embed_interpolation": "exact"}, "a ResNet takes none of the ViT options"),
    ):
        with pytest.raises(CheckpointError, match=f"resnet18.pth: {expected}") as error:
            load_backbone(file18, **options)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("depth", [18, 50])
def test_random_resnets_are_seeded(depth: int) -> None:
    model = load_backbone(f"random:resnet{depth}")
    torch.manual_seed(0)  # RANDOM_INIT_SEED, as for the random ViTs
    expected = ResNetBackbone(depth)
    assert is_resnet(model) and model.provenance.sha256 == state_dict_sha256(expected)
    assert model.provenance.source == f"random:resnet{depth}"
    assert model.provenance.description.startswith("random initialisation (seed 0)")


@pytest.mark.parametrize(
    ("name", "layout"),
    [("dino_resnet50", "backbone only"), ("densecl_r50_imagenet_200ep", "densecl"), ("densecl_r50_coco_800ep", "x")],
)
def test_resnet_releases_load_from_the_hub_cache(monkeypatch, tmp_path, weights50, name: str, layout: str) -> None:
    """The file the release URL names, in torch hub's cache in the layout SPEC §24 / §23 describes, loads offline."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    release = RESNET_RELEASES[name]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    served = weights50 if layout == "backbone only" else {"state_dict": weights50, "author": "DenseCL"}
    torch.save(served, tmp_path / "hub" / "checkpoints" / release.filename)
    model = load_backbone(name)
    assert is_resnet(model) and model.depth == 50 and model.provenance.source == name
    expected = ResNetBackbone(50)
    expected.load_state_dict(weights50)
    assert model.provenance.sha256 == state_dict_sha256(expected)
    assert release.url in model.provenance.description
    if name == "dino_resnet50":
        assert release.url == ("https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth")
        assert model.provenance.description.startswith("DINO ResNet-50 (Meta AI, Apache-2.0)")
    else:
        assert release.url == f"https://huggingface.co/xinlongwang/DenseCL/resolve/main/{name}.pth"
        assert model.provenance.description.startswith("DenseCL ResNet-50")


def test_resnet_release_offline_says_what_to_fetch_and_where(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        load_backbone("dino_resnet50")
    message = str(error.value)
    assert RESNET_RELEASES["dino_resnet50"].url in message
    assert str(tmp_path / "hub" / "checkpoints" / "dino_resnet50_pretrain.pth") in message


def test_a_damaged_cached_release_is_refused_in_one_line(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "dino_resnet50_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04 truncated")
    expected = f"{cached}: the cached dino_resnet50 weights are not a readable checkpoint"
    with pytest.raises(CheckpointError, match=expected) as error:
        load_backbone("dino_resnet50")
    assert "\n" not in str(error.value) and "delete the file to download it again" in str(error.value)


def test_the_extractor_gives_the_pooled_feature_and_the_grid(weights18) -> None:
    model = ResNetBackbone(18)
    model.load_state_dict(weights18)
    reference = torchvision_resnet(18, weights18)
    grids = IntermediateLayerGetter(reference, {"layer4": "layer4"}).eval()
    images = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(6))
    extractor = FeatureExtractor(model, runtime=Runtime(device="cpu", dtype="fp32"))
    batch = extractor.forward(images, patch_tokens=True)
    with torch.no_grad():
        torch.testing.assert_close(batch.cls, reference(images), rtol=0, atol=0)
        torch.testing.assert_close(batch.patch_tokens, grids(images)["layer4"].permute(0, 2, 3, 1), rtol=0, atol=0)
    assert batch.patch_tokens.shape == (2, 3, 2, 512) and batch.attention is None
    assert extractor.min_side == 32


def test_the_extractor_refuses_attention_of_a_resnet_in_one_line() -> None:
    extractor = FeatureExtractor(ResNetBackbone(18), runtime=Runtime(device="cpu", dtype="fp32"))
    with pytest.raises(ValueError, match="resnet18 has no self-attention to return") as error:
        extractor.forward(torch.zeros(1, 3, 64, 64), attention=True)
    assert "\n" not in str(error.value) and "dense grid" in str(error.value)
    with pytest.raises(ValueError, match="has no self-attention"):
        extractor.extract(["never/read.jpg"], attention=True)  # refused before any image is read


def test_the_token_budget_counts_grid_cells() -> None:
    from PIL import Image

    from dino.data.transforms import square_transform

    model = ResNetBackbone(18)
    image = Image.new("RGB", (65, 65), (120, 80, 40))
    quiet = Runtime(device="cpu", dtype="fp32", progress=False)
    # 65 px: a 3×3 layer4 grid (a ViT/32 would see 2×2 patches); 9 cells fit a budget of 9, not 8.
    fits = FeatureExtractor(model, square_transform(65), replace(quiet, max_tokens=9))
    assert fits.extract([image], patch_tokens=True).patch_tokens.shape == (1, 3, 3, 512)
    over = FeatureExtractor(model, square_transform(65), replace(quiet, max_tokens=8))
    with pytest.raises(TokenBudgetError, match="9 grid cells of 32 pixels, more than the limit of 8"):
        over.extract([image])
