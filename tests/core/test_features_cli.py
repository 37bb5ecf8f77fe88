"""FeatureExtractor outputs and the `dino` front door."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from dino import cli
from dino.checkpoint import load_backbone
from dino.data.transforms import knn_transform, make_transform
from dino.features import FeatureExtractor, autocast_dtype, pick_device


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(64, 48), (80, 80), (64, 48)]):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_extractor_matches_direct_forward(images) -> None:
    model = load_backbone("random:vit_tiny/16")
    transform = knn_transform(resize=40, crop=32)
    features = FeatureExtractor(model, transform, device="cpu", batch_size=2, progress=False).extract(
        images, patch_tokens=True, attention=True
    )
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        expected = model(batch)
        attention = model.get_last_selfattention(batch)
    torch.testing.assert_close(features.cls, expected, rtol=0, atol=1e-5)
    assert features.patch_tokens.shape == (3, 2, 2, 192)
    torch.testing.assert_close(features.attention, attention, rtol=0, atol=1e-6)


def test_variable_sizes_keep_input_order(images) -> None:
    model = load_backbone("random:vit_tiny/16")
    transform = make_transform("short-side", 32, patch_size=16)
    features = FeatureExtractor(model, transform, device="cpu", batch_size=3, progress=False).extract(
        images, patch_tokens=True
    )
    # 64×48 -> 42×32 and 80×80 -> 32×32, both cropped to 32×32: one grid size, so the result is stacked.
    assert isinstance(features.patch_tokens, torch.Tensor) and features.patch_tokens.shape == (3, 2, 2, 192)
    transform = make_transform("thumbnail", 64, patch_size=16)
    features = FeatureExtractor(model, transform, device="cpu", batch_size=3, progress=False).extract(
        images, patch_tokens=True
    )
    assert isinstance(features.patch_tokens, list)
    assert [tuple(t.shape[:2]) for t in features.patch_tokens] == [(3, 4), (4, 4), (3, 4)]
    with torch.no_grad():
        direct = model(transform(Image.open(images[1]).convert("RGB"))[None])[0]
    torch.testing.assert_close(features.cls[1], direct, rtol=0, atol=1e-5)


def test_device_and_dtype_choice() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), "fp16") is torch.float16
    with pytest.raises(ValueError):
        autocast_dtype(torch.device("cpu"), "int8")


def test_cli_help_lists_core_verbs(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "info" in text and "features" in text


def test_cli_features_writes_array_and_sidecar(images, tmp_path, capsys) -> None:
    out = tmp_path / "out" / "feats.npy"
    code = cli.main(
        [
            "features",
            str(images[0].parent),
            "--out",
            str(out),
            "--weights",
            "random:vit_tiny/16",
            "--size",
            "32",
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    array = np.load(out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert array.shape == (3, 192) and array.dtype == np.float32
    assert sidecar["images"] == [str(p) for p in images] and sidecar["shape"] == [3, 192]


def test_cli_reports_user_errors_without_traceback(monkeypatch, tmp_path, capsys) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    code = cli.main(["features", str(tmp_path / "a.png"), "--out", str(tmp_path / "f.npy"), "--weights", "dino_vits8"])
    err = capsys.readouterr().err
    assert code == 2 and "dino_deitsmall8_pretrain.pth" in err and "Traceback" not in err
    assert not (tmp_path / "f.npy").exists()
    code = cli.main(["features", str(tmp_path / "missing"), "--out", str(tmp_path / "f.npy")])
    assert code == 2 and "missing: no such file or folder" in capsys.readouterr().err


def test_cli_info_json(capsys) -> None:
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"] == torch.__version__ and report["device"] in ("cpu", "cuda", "mps")
