"""`dino info`, `dino features` and `dino export` on a ResNet, as a user runs them, against torchvision on the
same weights and preprocessing (SPEC §24: the embedding is the average-pooled feature, the grid layer4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

from dino.checkpoint import load_backbone
from dino.cli import main
from dino.data.io import open_image
from dino.data.transforms import knn_transform

RUNTIME = ["--device", "cpu", "--dtype", "fp32", "--workers", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Small inputs: one thread (see the root conftest)."""


def torchvision_resnet18() -> torchvision.models.ResNet:
    """torchvision's ResNet-18 holding the weights of ``random:resnet18``, fc = Identity (DINO's backbone)."""
    reference = torchvision.models.resnet18()
    missing, unexpected = reference.load_state_dict(load_backbone("random:resnet18").state_dict(), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and not unexpected
    reference.fc = torch.nn.Identity()
    return reference.eval()


def test_info_describes_a_resnet(capsys) -> None:
    assert main(["info", "--weights", "random:resnet18", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backbone"].startswith("resnet18: 512-d average-pooled feature")
    assert "dense grid layer4, stride 32, 512 channels; no attention" in report["backbone"]
    assert report["parameters"] == "11.2 M"  # torchvision's ResNet-18 without its 0.5 M fc
    assert report["weights_sha256"] == load_backbone("random:resnet18").provenance.sha256
    assert main(["info", "--weights", "random:resnet18", "--patch-size", "12"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "stride of 32 (layer4) or 16 (layer3), not patch_size=12" in error


def test_features_are_the_pooled_feature_and_the_layer4_grid(shared_photos, tmp_path, capsys) -> None:
    photos = shared_photos[:3]
    argv = ["features", *map(str, photos), "--weights", "random:resnet18", *RUNTIME]
    assert main([*argv, "--out", str(tmp_path / "cls.npy")]) == 0
    assert main([*argv, "--what", "patch", "--out", str(tmp_path / "patch.npy")]) == 0
    assert main([*argv, "--what", "patch", "--patch-size", "16", "--out", str(tmp_path / "layer3.npy")]) == 0
    capsys.readouterr()
    cls, patch = np.load(tmp_path / "cls.npy"), np.load(tmp_path / "patch.npy")
    layer3 = np.load(tmp_path / "layer3.npy")
    assert cls.shape == (3, 512) and patch.shape == (3, 7, 7, 512) and layer3.shape == (3, 14, 14, 256)
    sidecar = json.loads((tmp_path / "patch.json").read_text())
    assert (sidecar["weights"], sidecar["patch_size"], sidecar["embed_dim"]) == ("random:resnet18", 32, 512)

    reference = torchvision_resnet18()
    grids = IntermediateLayerGetter(reference, {"layer3": "layer3", "layer4": "layer4"}).eval()
    images = torch.stack([knn_transform()(open_image(path)) for path in photos])  # resize 256, crop 224
    with torch.no_grad():
        expected, expected_grids = reference(images), grids(images)
    np.testing.assert_allclose(cls, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(patch, expected_grids["layer4"].permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer3, expected_grids["layer3"].permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    # The pooled feature is the mean of the layer4 grid (torchvision's AdaptiveAvgPool2d(1)).
    np.testing.assert_allclose(patch.mean(axis=(1, 2)), cls, rtol=1e-5, atol=1e-5)


def test_export_writes_a_resnet_in_the_release_layout(tmp_path, capsys) -> None:
    """A DINO ResNet full checkpoint (teacher/student, `backbone.` / `module.` prefixes, a head) becomes the
    backbone-only torchvision layout of dino_resnet50's release: every key but `fc`, the values unchanged."""
    torch.manual_seed(7)
    weights = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    teacher = {f"backbone.{key}": value for key, value in weights.items()} | {"head.last_layer.weight": torch.ones(2)}
    student = {f"module.{key}": value for key, value in teacher.items()}
    torch.save({"teacher": teacher, "student": student, "epoch": 3}, tmp_path / "full.pth")
    out = tmp_path / "backbone.pth"
    assert main(["export", str(tmp_path / "full.pth"), str(out), "--dtype", "fp32"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    exported = torch.load(out, weights_only=True)
    assert set(exported) == set(weights)
    assert all(torch.equal(exported[key], weights[key]) for key in weights)
    reloaded = load_backbone(out)
    assert reloaded.arch == "resnet18" and reloaded.provenance.description == f"ResNet-18 weights file {out}"
