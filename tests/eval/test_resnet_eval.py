"""`dino knn` and `dino linear` on a ResNet: its embedding is the average-pooled feature (SPEC §9, §24), and the
ViT-only options of the linear probe are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dino.checkpoint import load_backbone
from dino.cli import main
from dino.eval.linear import linear_features, run_linear

RUNTIME = ["--device", "cpu", "--dtype", "fp32", "--workers", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Small inputs: one thread (see the root conftest)."""


def labelled(root: Path, classes: dict[str, list[Path]]) -> Path:
    """ROOT/<class>/<photo> copies."""
    for name, photos in classes.items():
        (root / name).mkdir(parents=True)
        for photo in photos:
            shutil.copy(photo, root / name / photo.name)
    return root


def test_knn_on_a_resnet_finds_each_image_itself(shared_photos, tmp_path, capsys) -> None:
    """The queries are the bank's own photos: each one's nearest neighbour (cosine 1) is itself, so 1-NN is
    right for every query under its own label (100 %) and wrong for every one under the other label (0 %)."""
    first, second = shared_photos[:3], shared_photos[3:]
    train = labelled(tmp_path / "train", {"a": first, "b": second})
    same = labelled(tmp_path / "same", {"a": first, "b": second})
    swapped = labelled(tmp_path / "swapped", {"a": second, "b": first})
    argv = ["knn", "--train", str(train), "--weights", "random:resnet18", "--nb-knn", "1", *RUNTIME]
    assert main([*argv, "--val", str(same), "--out", str(tmp_path / "same.json")]) == 0
    assert main([*argv, "--val", str(swapped), "--out", str(tmp_path / "swapped.json")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "same.json").read_text())["results"] == [{"k": 1, "top1": 100.0, "top5": 100.0}]
    assert json.loads((tmp_path / "swapped.json").read_text())["results"][0]["top1"] == 0.0


def test_linear_input_of_a_resnet_is_its_pooled_feature() -> None:
    model = load_backbone("random:resnet18")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = linear_features(model, images, 4, avgpool=False)
        torch.testing.assert_close(features, model.forward_features(images).layer4.mean(dim=(2, 3)))
    assert features.shape == (2, 512)


def test_linear_refuses_vit_options_for_a_resnet_in_one_line(tmp_path, capsys) -> None:
    model = load_backbone("random:resnet18")
    for options, named in (
        ({"n_last_blocks": 1}, "n_last_blocks (--n-last-blocks)"),
        ({"avgpool": True}, "avgpool (--avgpool-patchtokens)"),
        ({"linear_input": "dinov2"}, "linear_input dinov2 (--linear-input dinov2)"),
    ):
        with pytest.raises(ValueError, match=r"ViT options; a resnet18's linear input is its 512-d average-pooled"):
            run_linear(model, tmp_path / "never", tmp_path / "read", **options)  # before any folder is read
        with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
            run_linear(model, tmp_path / "never", tmp_path / "read", **options)
    code = main(["linear", "--train", "x", "--val", "y", "--weights", "random:resnet18", "--n-last-blocks", "2"])
    last = capsys.readouterr().err.splitlines()[-1]  # after the note on random weights
    assert code == 2 and last.startswith("dino linear: error: n_last_blocks (--n-last-blocks): ViT options")


def test_linear_trains_on_the_pooled_feature(shared_photos, tmp_path, capsys) -> None:
    classes = {"a": shared_photos[:3], "b": shared_photos[3:]}
    train, val = labelled(tmp_path / "train", classes), labelled(tmp_path / "val", classes)
    out = tmp_path / "linear"
    argv = ["linear", "--train", str(train), "--val", str(val), "--weights", "random:resnet18", "--epochs", "1"]
    assert main([*argv, "--batch-size", "6", "--output-dir", str(out), *RUNTIME]) == 0
    assert "best top-1" in capsys.readouterr().out
    results = json.loads((out / "linear_results.json").read_text())
    assert results["linear_input"] == {"layout": "resnet_pooled", "dim": 512}
    assert results["weights"] == "random:resnet18" and len(results["history"]) == 1
    state = torch.load(out / "linear_weights.pth", weights_only=True)["state_dict"]
    assert state["module.linear.weight"].shape == (2, 512) and state["module.linear.bias"].shape == (2,)
