"""ResNet-50 (SPEC §23, §24): the backbone against torchvision and timm on identical weights, and every checkpoint
layout DINO and DenseCL release it in."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from dino.checkpoint import CheckpointError, load_backbone, load_resnet
from dino.checksums import state_dict_sha256
from dino.hub.formats import LayoutError, resnet_state_dict
from dino.models.resnet import ResNetBackbone, resnet50


@pytest.fixture(scope="module")
def torchvision_resnet() -> torchvision.models.ResNet:
    """A torchvision ResNet-50 with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def backbone_keys(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value for key, value in model.state_dict().items() if not key.startswith("fc.")}


def test_the_backbone_is_torchvisions_without_the_classifier(torchvision_resnet, images) -> None:
    model = resnet50()
    assert set(model.state_dict()) == set(backbone_keys(torchvision_resnet))
    model.load_state_dict(backbone_keys(torchvision_resnet))
    model.eval()
    with torch.no_grad():
        torchvision_resnet.fc, classifier = torch.nn.Identity(), torchvision_resnet.fc  # what main_dino.py does
        expected = torchvision_resnet(images)
        torchvision_resnet.fc = classifier
        features = model.forward_features(images)
        pooled = model(images)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    torch.testing.assert_close(features.pooled, expected, rtol=0, atol=0)
    assert features.layer3.shape == (2, 1024, 4, 6) and features.layer4.shape == (2, 2048, 2, 3)
    torch.testing.assert_close(features.layer4.mean(dim=(2, 3)), expected, rtol=1e-6, atol=1e-6)


def test_timm_resnet50_loads_and_agrees(images, tmp_path) -> None:
    torch.manual_seed(2)
    reference = timm.create_model("resnet50", pretrained=False).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    model = load_resnet(tmp_path / "timm.pth")
    with torch.no_grad():
        grid = reference.forward_features(images)
        pooled = reference.forward_head(grid, pre_logits=True)
        features = model.forward_features(images)
    torch.testing.assert_close(features.layer4, grid, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features.pooled, pooled, rtol=1e-5, atol=1e-5)


def layouts(weights: dict[str, torch.Tensor]) -> dict[str, tuple[dict, str]]:
    """Each released or trained layout of the same backbone weights, with the checkpoint key to read it by."""
    head = {"head.mlp.0.weight": torch.zeros(2, 2048), "head.last_layer.weight_g": torch.ones(3, 1)}
    neck = {"encoder_q.1.mlp.0.weight": torch.zeros(2048, 2048)}
    return {
        "DINO release (backbone only)": (dict(weights), "teacher"),
        "DINO full checkpoint, teacher": (
            {
                "teacher": {**{f"backbone.{k}": v for k, v in weights.items()}, **head},
                "student": {f"module.backbone.{k}": v * 0 for k, v in weights.items()},
                "epoch": 100,
            },
            "teacher",
        ),
        "DINO full checkpoint, student": (
            {
                "teacher": {f"backbone.{k}": v * 0 for k, v in weights.items()},
                "student": {
                    **{f"module.backbone.{k}": v for k, v in weights.items()},
                    **{f"module.{k}": v for k, v in head.items()},
                },
            },
            "student",
        ),
        "DenseCL release": ({"state_dict": dict(weights), "author": "DenseCL"}, "teacher"),
        "DenseCL training checkpoint": (
            {
                "state_dict": {
                    **{f"encoder_q.0.{k}": v for k, v in weights.items()},
                    **neck,
                    **{f"encoder_k.0.{k}": v * 0 for k, v in weights.items()},
                    "queue": torch.randn(128, 16),
                    "queue_ptr": torch.zeros(1, dtype=torch.long),
                    "queue2": torch.randn(128, 16),
                },
                "meta": {"epoch": 200},
            },
            "teacher",
        ),
        "torchvision state dict (classifier dropped)": (
            {**weights, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)},
            "teacher",
        ),
    }


def test_every_layout_gives_the_same_backbone(torchvision_resnet) -> None:
    weights = backbone_keys(torchvision_resnet)
    for name, (checkpoint, key) in layouts(weights).items():
        state = resnet_state_dict(checkpoint, key, name)
        assert set(state) == set(weights), name
        assert all(torch.equal(state[k], weights[k]) for k in weights), name


def test_files_load_strictly_with_provenance(torchvision_resnet, images, tmp_path) -> None:
    weights = backbone_keys(torchvision_resnet)
    checkpoint, key = layouts(weights)["DINO full checkpoint, student"]
    torch.save(checkpoint, tmp_path / "full.pth")
    model = load_resnet(tmp_path / "full.pth", checkpoint_key=key)
    assert not model.training
    expected = resnet50()
    expected.load_state_dict(weights)
    assert model.provenance is not None and model.provenance.checkpoint_key == "student"
    assert model.provenance.source == str(tmp_path / "full.pth")
    assert model.provenance.sha256 == state_dict_sha256(expected)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected.eval()(images), rtol=0, atol=0)


def test_wrong_files_are_refused_in_one_line(torchvision_resnet, tmp_path) -> None:
    vit = load_backbone("random:vit_tiny/16")
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match=r"vit\.pth: no ResNet backbone found") as error:
        load_resnet(tmp_path / "vit.pth")
    assert "\n" not in str(error.value)
    partial = backbone_keys(torchvision_resnet)
    del partial["layer4.2.bn3.running_var"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial\.pth: weights do not fit ResNet-50; missing keys"):
        load_resnet(tmp_path / "partial.pth")
    broken = backbone_keys(torchvision_resnet)
    broken["conv1.weight"] = torch.full_like(broken["conv1.weight"], float("nan"))
    torch.save(broken, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan\.pth: weights hold NaN or Inf values in \['conv1.weight'\]"):
        load_resnet(tmp_path / "nan.pth")
    with pytest.raises(LayoutError, match="no ResNet backbone found"):
        resnet_state_dict({"state_dict": {"queue": torch.zeros(2)}}, "teacher", "queues only")


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_the_depth_is_read_from_the_keys(depth, tmp_path) -> None:
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")()
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    model = load_resnet(tmp_path / "weights.pth")
    assert isinstance(model, ResNetBackbone) and model.depth == depth and model.arch == f"resnet{depth}"
    assert model.embed_dim == reference.fc.in_features
    image = torch.randn(1, 3, 64, 64)
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(model(image), reference.eval()(image), rtol=0, atol=0)


def test_a_resnet_of_no_known_depth_is_refused(tmp_path) -> None:
    weights = backbone_keys(torchvision.models.resnet18())
    weights = {key: value for key, value in weights.items() if not key.startswith("layer3.1.")}
    torch.save(weights, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd\.pth: a ResNet with basic blocks \[2, 2, 1, 2\] per stage"):
        load_resnet(tmp_path / "odd.pth")
