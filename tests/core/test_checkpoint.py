"""load_backbone against the official layouts of SPEC §7, built here from the spec, not from our model."""

from __future__ import annotations

import argparse
import hashlib
import json
import urllib.error

import pytest
import torch

from dino.atomic import atomic_write_json
from dino.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    infer_architecture,
    load_backbone,
    model_identity,
)
from dino.hub.releases import RELEASES, WeightsUnavailableError, weights_provenance
from dino.models import DINOHead, WeightsProvenance, build_vit, vit_tiny

SPEC_DIMS = {"vit_small": (384, 6), "vit_base": (768, 12)}
BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def official_backbone_state_dict(arch: str, patch_size: int, img_size: int = 224) -> dict[str, torch.Tensor]:
    """A backbone-only release file as SPEC §7 describes it: no prefix, 12 blocks, final norm."""
    dim, _ = SPEC_DIMS[arch]
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + (img_size // patch_size) ** 2, dim),
        "patch_embed.proj.weight": (dim, 3, patch_size, patch_size),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    out_dims = {"norm1": dim, "attn.qkv": 3 * dim, "attn.proj": dim, "norm2": dim, "mlp.fc1": 4 * dim, "mlp.fc2": dim}
    in_dims = {"attn.qkv": dim, "attn.proj": dim, "mlp.fc1": dim, "mlp.fc2": 4 * dim}
    for block in range(12):
        for name in BLOCK_PARAMS:
            prefix = f"blocks.{block}.{name}"
            shapes[f"{prefix}.weight"] = (out_dims[name], in_dims[name]) if name in in_dims else (dim,)
            shapes[f"{prefix}.bias"] = (out_dims[name],)
    generator = torch.Generator().manual_seed(1)
    return {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}


def official_head_state_dict(in_dim: int, out_dim: int = 512) -> dict[str, torch.Tensor]:
    """DINOHead keys of SPEC §2 with weight_g/weight_v."""
    return {
        "mlp.0.weight": torch.randn(2048, in_dim),
        "mlp.0.bias": torch.zeros(2048),
        "mlp.2.weight": torch.randn(2048, 2048),
        "mlp.2.bias": torch.zeros(2048),
        "mlp.4.weight": torch.randn(256, 2048),
        "mlp.4.bias": torch.zeros(256),
        "last_layer.weight_g": torch.ones(out_dim, 1),
        "last_layer.weight_v": torch.randn(out_dim, 256),
    }


@pytest.mark.parametrize(
    ("arch", "patch_size"), [("vit_small", 16), ("vit_small", 8), ("vit_base", 16), ("vit_base", 8)]
)
def test_backbone_only_release_layout_loads_strictly(tmp_path, arch: str, patch_size: int) -> None:
    state = official_backbone_state_dict(arch, patch_size)
    path = tmp_path / "release.pth"
    torch.save(state, path)
    model = load_backbone(path)
    assert (model.embed_dim, model.num_heads, model.patch_size) == (SPEC_DIMS[arch][0], SPEC_DIMS[arch][1], patch_size)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not model.training


def test_full_checkpoint_with_prefixes_loads_teacher_and_student(tmp_path) -> None:
    backbone = official_backbone_state_dict("vit_small", 16)
    head = official_head_state_dict(384)
    student = {f"module.backbone.{k}": v + 1 for k, v in backbone.items()}
    student |= {f"module.head.{k}": v for k, v in head.items()}
    checkpoint = {
        "student": student,
        "teacher": {f"backbone.{k}": v for k, v in backbone.items()} | {f"head.{k}": v for k, v in head.items()},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=512),
        "dino_loss": {"center": torch.zeros(1, 512)},
    }
    path = tmp_path / "full.pth"
    torch.save(checkpoint, path)
    teacher = load_backbone(path)  # weights_only=True even though `args` is a Namespace
    torch.testing.assert_close(teacher.cls_token, backbone["cls_token"])
    student_model = load_backbone(path, checkpoint_key="student")
    torch.testing.assert_close(student_model.cls_token, backbone["cls_token"] + 1)
    # The head part of the official full checkpoint loads strictly into our DINOHead.
    DINOHead(384, 512).load_state_dict(
        {k[len("head.") :]: v for k, v in checkpoint["teacher"].items() if k.startswith("head.")}
    )


def test_timm_and_state_dict_wrapped_layouts(tmp_path) -> None:
    backbone = official_backbone_state_dict("vit_small", 8)
    timm_style = backbone | {"head.weight": torch.randn(1000, 384), "head.bias": torch.zeros(1000)}
    torch.save({"state_dict": timm_style}, tmp_path / "timm.pth")
    model = load_backbone(tmp_path / "timm.pth")
    assert model.patch_size == 8


def test_own_model_round_trip_with_non_default_resolution(tmp_path) -> None:
    model = vit_tiny(16, img_size=96)
    atomic_torch_save({"teacher": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "own.pth")
    loaded = load_backbone(tmp_path / "own.pth")
    assert infer_architecture(loaded.state_dict()) == ("vit_tiny", 16, 96)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_mismatched_keys_are_named(tmp_path) -> None:
    state = official_backbone_state_dict("vit_small", 16)
    del state["blocks.3.attn.qkv.weight"]
    state["blocks.3.ls1.gamma"] = torch.ones(384)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as error:
        load_backbone(tmp_path / "bad.pth")
    message = str(error.value)
    assert "bad.pth" in message and "blocks.3.attn.qkv.weight" in message and "blocks.3.ls1.gamma" in message


def test_requested_arch_must_match_weights(tmp_path) -> None:
    torch.save(official_backbone_state_dict("vit_small", 16), tmp_path / "s16.pth")
    with pytest.raises(CheckpointError, match="patch_size=16 but patch_size=8"):
        load_backbone(tmp_path / "s16.pth", patch_size=8)
    with pytest.raises(CheckpointError, match="vit_base"):
        load_backbone(tmp_path / "s16.pth", arch="vit_base")


def test_loaded_backbone_records_how_to_load_it_again(tmp_path, monkeypatch) -> None:
    torch.save({"student": official_backbone_state_dict("vit_small", 16)}, tmp_path / "run.pth")
    monkeypatch.chdir(tmp_path)
    model = load_backbone("run.pth", checkpoint_key="student")
    identity = model_identity(model)
    assert identity["weights"] == str(tmp_path / "run.pth") and identity["checkpoint_key"] == "student"
    assert model_identity(load_backbone("random:vit_tiny/16"))["weights"] == "random:vit_tiny/16"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict as model manifests record it, written out here from its definition: for each key
    in order, ``key:dtype:(numel,);`` and then the tensor's bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        flat = state[key].detach().contiguous().reshape(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(flat.shape)};".encode())
        digest.update(flat.numpy().tobytes())
    return digest.hexdigest()


def test_loaded_backbone_carries_its_provenance(tmp_path, monkeypatch) -> None:
    random = load_backbone("random:vit_tiny/16")
    assert random.provenance == WeightsProvenance(
        source="random:vit_tiny/16",
        checkpoint_key="teacher",
        sha256=weights_digest(random.state_dict()),
        description="random initialisation (seed 0), no learned features",
    )
    student = {key: value + 1 for key, value in random.state_dict().items()}
    torch.save({"teacher": random.state_dict(), "student": student}, tmp_path / "run.pth")
    monkeypatch.chdir(tmp_path)
    loaded = load_backbone("run.pth", checkpoint_key="student")
    assert loaded.provenance == WeightsProvenance(
        source=str(tmp_path / "run.pth"),
        checkpoint_key="student",
        sha256=weights_digest(student),
        description=weights_provenance(str(tmp_path / "run.pth")),
    )
    assert build_vit("vit_tiny").provenance is None


def test_model_identity_reads_the_checksum_computed_at_load(monkeypatch) -> None:
    model = load_backbone("random:vit_tiny/16")
    hashed = []
    monkeypatch.setattr("dino.checkpoint.state_dict_sha256", lambda module: hashed.append(module) or "rehashed")
    identity = model_identity(model)
    assert model_identity(model) == identity and not hashed
    assert identity == {
        "weights": "random:vit_tiny/16",
        "provenance": "random initialisation (seed 0), no learned features",
        "checkpoint_key": "teacher",
        "arch": "vit_tiny",
        "patch_size": 16,
        "num_register_tokens": 0,
        "embed_dim": 192,
        "sha256": weights_digest(model.state_dict()),
    }
    model.to(torch.float32)  # a move to another device or dtype that changes nothing keeps the checksum
    assert model_identity(model)["sha256"] == identity["sha256"] and not hashed
    with torch.no_grad():
        model.blocks[0].mlp.fc1.bias.add_(0.5)  # weights changed since loading: hashed again
    assert model_identity(model)["sha256"] == "rehashed" and hashed == [model]
    hashed.clear()
    # A model that load_backbone did not load has no provenance: hashed when asked, as before.
    unloaded = build_vit("vit_tiny")
    assert model_identity(unloaded)["sha256"] == "rehashed" and hashed == [unloaded]
    assert (model_identity(unloaded)["weights"], model_identity(unloaded)["checkpoint_key"]) == ("", "teacher")


def test_bad_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_backbone(tmp_path / "missing.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes.txt: not a PyTorch checkpoint \(neither") as refused:
        load_backbone(tmp_path / "notes.txt")
    assert "\n" not in str(refused.value) and "weights_only" not in str(refused.value)
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable PyTorch checkpoint") as refused:
        load_backbone(tmp_path / "truncated.pth")
    assert "\n" not in str(refused.value)
    torch.save({"optimizer": {}}, tmp_path / "no_backbone.pth")
    with pytest.raises(CheckpointError, match="no ViT backbone"):
        load_backbone(tmp_path / "no_backbone.pth")


class Unsafe:
    """A class that weights_only loading must refuse to unpickle."""


def test_non_finite_weights_are_refused_with_the_tensor_named(tmp_path) -> None:
    state = official_backbone_state_dict("vit_small", 16)
    state["blocks.3.attn.qkv.weight"][0, 0] = float("nan")
    state["norm.bias"][1] = float("inf")
    torch.save(state, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=r"diverged.pth: weights hold NaN or Inf values in .*blocks.3.attn.qkv"):
        load_backbone(tmp_path / "diverged.pth")


def test_weights_only_refuses_arbitrary_objects(tmp_path) -> None:
    torch.save({"teacher": official_backbone_state_dict("vit_small", 16), "extra": Unsafe()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_backbone(tmp_path / "pickle.pth")
    assert load_backbone(tmp_path / "pickle.pth", weights_only=False).embed_dim == 384


@pytest.mark.parametrize(
    ("name", "filename"),
    [("dino_vits16", "dino_deitsmall16_pretrain.pth"), ("dinov2_vitb14_reg", "dinov2_vitb14_reg4_pretrain.pth")],
)
def test_release_name_offline_says_what_to_fetch(monkeypatch, tmp_path, name: str, filename: str) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        load_backbone(name)
    message = str(error.value)
    release = RELEASES[name]
    assert release.url in message and "--weights" in message
    assert str(tmp_path / "hub" / "checkpoints" / filename) in message


def test_a_downloaded_dinov2_release_loads_strictly_with_its_convention(monkeypatch) -> None:
    """What the hub serves for dinov2_vits14_reg (SPEC §21 keys), as the download would return it."""
    served = load_backbone("random:dinov2_vits14_reg").state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *args, **kwargs: served)
    model = load_backbone("dinov2_vits14_reg")
    assert (model.num_register_tokens, model.pos_embed_interpolation, model.provenance.source) == (
        4,
        "exact_antialias",
        "dinov2_vits14_reg",
    )
    with pytest.raises(CheckpointError, match="do not match the release"):
        load_backbone("dinov2_vits14")  # registers served for the plain release: refused


def test_release_table_matches_spec() -> None:
    assert (
        RELEASES["dino_vits8"].url
        == "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"
    )
    assert {name: (r.arch, r.patch_size, r.num_register_tokens) for name, r in RELEASES.items()} == {
        "dino_vits16": ("vit_small", 16, 0),
        "dino_vits8": ("vit_small", 8, 0),
        "dino_vitb16": ("vit_base", 16, 0),
        "dino_vitb8": ("vit_base", 8, 0),
        "dinov2_vits14": ("vit_small", 14, 0),
        "dinov2_vitb14": ("vit_base", 14, 0),
        "dinov2_vitl14": ("vit_large", 14, 0),
        "dinov2_vitg14": ("vit_giant2", 14, 0),
        "dinov2_vits14_reg": ("vit_small", 14, 4),
        "dinov2_vitb14_reg": ("vit_base", 14, 4),
        "dinov2_vitl14_reg": ("vit_large", 14, 4),
        "dinov2_vitg14_reg": ("vit_giant2", 14, 4),
    }
    # SPEC §21: <root>/dinov2/<name>/<name>_pretrain.pth and <name>_reg4_pretrain.pth
    assert (
        RELEASES["dinov2_vitl14"].url
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
    )
    assert (
        RELEASES["dinov2_vitg14_reg"].url
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth"
    )


def test_random_source_is_seeded_and_configurable() -> None:
    first, second = load_backbone("random:vit_tiny/8"), load_backbone("random:vit_tiny/8")
    assert first.patch_size == 8 and first.embed_dim == 192
    assert torch.equal(first.pos_embed, second.pos_embed)
    assert load_backbone("random", arch="vit_tiny").patch_size == 16
    for spec in ("random:vit_small/0", "random:vit_small/abc", "random:vit_small/-8"):
        with pytest.raises(CheckpointError, match="patch size after '/' must be a positive integer"):
            load_backbone(spec)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path) -> None:
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"a": torch.ones(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_atomic_outputs_get_ordinary_permissions_and_folders_swap(tmp_path) -> None:
    import os
    import stat

    from dino.atomic import atomic_output_dir, restore_interrupted_output_dir

    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "result.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644
        with atomic_output_dir(tmp_path / "out") as staging:
            (staging / "x.txt").write_text("first")
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    finally:
        os.umask(umask)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        with atomic_output_dir(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "out", replaceable=lambda p: True) as staging:
        (staging / "x.txt").write_text("second")
        raise RuntimeError("interrupted")
    assert (tmp_path / "out" / "x.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    with atomic_output_dir(tmp_path / "out", replaceable=lambda p: True) as staging:
        (staging / "x.txt").write_text("second")
    assert (tmp_path / "out" / "x.txt").read_text() == "second"
    # A crash between the two renames leaves only the set-aside copy; it is put back.
    os.replace(tmp_path / "out", tmp_path / ".out.old-1234abcd")
    assert restore_interrupted_output_dir(tmp_path / "out")
    assert (tmp_path / "out" / "x.txt").read_text() == "second"


def test_json_outputs_write_non_finite_numbers_as_null(tmp_path) -> None:
    atomic_write_json(tmp_path / "r.json", {"mAP": float("nan"), "rows": [1.5, float("inf"), {"x": -float("inf")}]})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"mAP": None, "rows": [1.5, None, {"x": None}]}


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from dino.atomic import atomic_output_path, remove_stale_temporaries

    # A writer killed with SIGKILL leaves its temporary file and staging folder behind.
    script = (
        "import os, signal, sys\n"
        "from dino.atomic import atomic_output_dir, atomic_output_path\n"
        "with atomic_output_dir(sys.argv[1] + '/index') as staging:\n"
        "    (staging / 'part').write_text('x')\n"
        "    with atomic_output_path(sys.argv[1] + '/checkpoint.pth') as temporary:\n"
        "        temporary.write_text('half')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert killed.returncode == -9
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) == 2 and all(name.endswith(".tmp") for name in leftovers), leftovers
    (tmp_path / "keep.txt").write_text("not a temporary")
    (tmp_path / ".hidden.txt").write_text("not ours")
    with atomic_output_path(tmp_path / "live.json") as live:  # this process is alive: its temporary stays
        live.write_text("{}")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(p.name for p in removed) == leftovers
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".hidden.txt", "keep.txt", live.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.txt", "keep.txt", "live.json"]
    assert os.path.isfile(tmp_path / "live.json") and remove_stale_temporaries(tmp_path / "missing") == []
