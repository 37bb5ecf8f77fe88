"""DINOv2-family backbones (SPEC §21) against independent implementations: timm and Hugging Face `transformers`.

Each reference model gets random weights (every parameter, LayerScale included, so that no branch hides behind a
1e-5 scale), is saved in its own format, loaded with `load_backbone`, and run on the same images: normalised
tokens within 1e-4, last-layer attention within 1e-5, at 224² and at a non-square size.
"""

from __future__ import annotations

import pytest
import torch

from dino.checkpoint import CheckpointError, atomic_torch_save, load_backbone, model_identity
from dino.models.vision_transformer import VisionTransformer

SIZES_14 = [(224, 224), (168, 294)]
SIZES_16 = [(224, 224), (160, 288)]
TOKENS_ATOL = 1e-4
ATTENTION_ATOL = 1e-5


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every floating parameter to N(0, 0.02²), LayerScale and norm gains to 1 ± 0.1: all branches matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            is_gain = name.endswith(("gamma", "lambda1")) or (
                parameter.ndim == 1 and "norm" in name and "weight" in name
            )
            parameter.copy_(1.0 + 0.1 * noise if is_gain else 0.02 * noise)


def images(height: int, width: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * 7 + width))


def ours(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model.forward_with_attention(x)
    assert torch.allclose(out.tokens, model.forward_features(x), atol=1e-5)
    return out.tokens, out.attention


def without_registers(tokens: torch.Tensor, registers: int) -> torch.Tensor:
    return torch.cat((tokens[..., :1, :], tokens[..., 1 + registers :, :]), dim=-2)


def strip_register_attention(attention: torch.Tensor, registers: int) -> torch.Tensor:
    keep = [0, *range(1 + registers, attention.shape[-1])]
    return attention[..., keep, :][..., keep]


# ---------------------------------------------------------------------------- timm
def timm_last_attention(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's normalised tokens and its last block's attention probabilities (explicit path, via a hook)."""
    attention = model.blocks[-1].attn
    attention.fused_attn = False
    captured = []
    handle = attention.attn_drop.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        tokens = model.forward_features(x)
    handle.remove()
    return tokens, captured[0]


@pytest.mark.parametrize(
    ("name", "registers", "sizes"),
    [
        ("vit_small_patch14_dinov2", 0, SIZES_14),
        ("vit_small_patch14_reg4_dinov2", 4, SIZES_14),
        ("vit_small_patch16_224", 0, SIZES_16),
    ],
)
def test_timm_state_dicts_load_and_match(tmp_path, name: str, registers: int, sizes) -> None:
    timm = pytest.importorskip("timm")
    reference = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    randomize(reference)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    # timm resamples positions to the exact grid with antialias; the plain layout shares the official keys, so
    # it loads with the official convention unless told otherwise (timm's reg layout is recognised by itself).
    options = {} if registers else {"pos_embed_interpolation": "exact_antialias"}
    model = load_backbone(path, **options)
    assert model.num_register_tokens == registers
    assert model.pos_embed_interpolation == "exact_antialias"
    for height, width in sizes:
        x = images(height, width)
        their_tokens, their_attention = timm_last_attention(reference, x)
        tokens, attention = ours(model, x)
        torch.testing.assert_close(tokens, without_registers(their_tokens, registers), atol=TOKENS_ATOL, rtol=0)
        expected = strip_register_attention(their_attention, registers)
        torch.testing.assert_close(attention, expected, atol=ATTENTION_ATOL, rtol=0)


def test_timm_giant_swiglu_loads_and_matches(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    reference = timm.create_model(
        "vit_giant_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True, depth=2, img_size=98
    ).eval()
    randomize(reference)
    torch.save(reference.state_dict(), tmp_path / "giant.pth")
    model = load_backbone(tmp_path / "giant.pth", pos_embed_interpolation="exact_antialias")
    assert (model.ffn, len(model.blocks), model.embed_dim, model.num_heads) == ("swiglu", 2, 1536, 24)
    x = images(112, 126, batch=1)
    their_tokens, their_attention = timm_last_attention(reference, x)
    tokens, attention = ours(model, x)
    torch.testing.assert_close(tokens, their_tokens, atol=TOKENS_ATOL, rtol=0)
    torch.testing.assert_close(attention, their_attention, atol=ATTENTION_ATOL, rtol=0)


# ---------------------------------------------------------------------------- Hugging Face transformers
def hugging_face_model(kind: str, registers: int = 0):
    transformers = pytest.importorskip("transformers")
    common = dict(hidden_size=384, num_hidden_layers=3, num_attention_heads=6, intermediate_size=1536)
    if kind == "vit":
        config = transformers.ViTConfig(
            **common, patch_size=16, image_size=224, layer_norm_eps=1e-6, attn_implementation="eager"
        )
        return transformers.ViTModel(config, add_pooling_layer=True).eval()
    options = dict(common, patch_size=14, image_size=518, mlp_ratio=4, layer_norm_eps=1e-6)
    options.pop("intermediate_size")
    if kind == "dinov2":
        config = transformers.Dinov2Config(**options, attn_implementation="eager")
        return transformers.Dinov2Model(config).eval()
    config = transformers.Dinov2WithRegistersConfig(
        **options, num_register_tokens=registers, attn_implementation="eager"
    )
    return transformers.Dinov2WithRegistersModel(config).eval()


@pytest.mark.parametrize(
    ("kind", "registers", "sizes", "convention"),
    [
        ("dinov2", 0, SIZES_14, "exact"),
        ("dinov2_with_registers", 4, SIZES_14, "exact_antialias"),
        ("vit", 0, SIZES_16, "exact"),
    ],
)
@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_folders_load_and_match(tmp_path, kind, registers, sizes, convention, weights_file) -> None:
    reference = hugging_face_model(kind, registers)
    randomize(reference)
    reference.save_pretrained(tmp_path)
    if weights_file == "pytorch_model.bin":  # transformers 5 writes only safetensors; older releases wrote this
        from safetensors.torch import load_file

        torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / weights_file)
        (tmp_path / "model.safetensors").unlink()
    model = load_backbone(tmp_path)
    assert (model.num_register_tokens, model.pos_embed_interpolation, len(model.blocks)) == (
        registers,
        convention,
        3,
    )
    assert model.layer_scale == (kind != "vit")
    for height, width in sizes:
        x = images(height, width)
        options = {"interpolate_pos_encoding": True} if kind == "vit" else {}
        with torch.no_grad():
            out = reference(pixel_values=x, output_attentions=True, **options)
        tokens, attention = ours(model, x)
        their_tokens = without_registers(out.last_hidden_state, registers)
        torch.testing.assert_close(tokens, their_tokens, atol=TOKENS_ATOL, rtol=0)
        expected = strip_register_attention(out.attentions[-1], registers)
        torch.testing.assert_close(attention, expected, atol=ATTENTION_ATOL, rtol=0)
    # The weights file alone (no folder) loads the same tensors.
    alone = load_backbone(tmp_path / weights_file)
    assert model_identity(alone)["sha256"] == model_identity(model)["sha256"]


def test_hugging_face_swiglu_and_task_prefix(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=1536, num_hidden_layers=1, num_attention_heads=24, patch_size=14, image_size=56,
        use_swiglu_ffn=True, layer_norm_eps=1e-6, attn_implementation="eager", num_labels=3,
    )  # fmt: skip
    reference = transformers.Dinov2ForImageClassification(config).eval()
    randomize(reference)
    reference.save_pretrained(tmp_path)
    model = load_backbone(tmp_path)
    assert model.ffn == "swiglu"
    x = images(70, 84, batch=1)
    with torch.no_grad():
        theirs = reference.dinov2(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ours(model, x)[0], theirs, atol=TOKENS_ATOL, rtol=0)


def test_hugging_face_folder_of_another_model_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        load_backbone(tmp_path)


# ---------------------------------------------------------------------------- official layout
def official_dinov2_state(registers: int, chunks: int = 0) -> dict[str, torch.Tensor]:
    """An official DINOv2 hub file as SPEC §21 lists its keys, from a model of that architecture."""
    source = "random:dinov2_vits14_reg" if registers else "random:dinov2_vits14"
    state = load_backbone(source).state_dict()
    assert {"mask_token", "blocks.11.ls2.gamma"} <= set(state) and (("register_tokens" in state) == bool(registers))
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    if chunks:  # a training checkpoint with block_chunks: blocks.<chunk>.<global index>.…
        per_chunk = 12 // chunks
        state = {
            (f"blocks.{int(k.split('.')[1]) // per_chunk}.{k[len('blocks.') :]}" if k.startswith("blocks.") else k): v
            for k, v in state.items()
        }
    return state


@pytest.mark.parametrize(("registers", "convention"), [(0, "reference"), (4, "exact_antialias")])
def test_official_dinov2_files_load_with_their_convention(tmp_path, registers, convention) -> None:
    state = official_dinov2_state(registers)
    atomic_torch_save(state, tmp_path / "hub.pth")
    model = load_backbone(tmp_path / "hub.pth")
    assert (model.pos_embed_interpolation, model.num_register_tokens, model.patch_size) == (convention, registers, 14)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    identity = model_identity(model)
    assert (identity["arch"], identity["patch_size"], identity["num_register_tokens"]) == ("vit_small", 14, registers)


def test_chunked_training_checkpoint_and_teacher_prefix(tmp_path) -> None:
    state = official_dinov2_state(4, chunks=4)
    assert "blocks.3.11.norm1.weight" in state
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "train.pth")
    model = load_backbone(tmp_path / "train.pth")
    reference = load_backbone("random:dinov2_vits14_reg")
    assert model_identity(model)["sha256"] == model_identity(reference)["sha256"]


def test_layout_errors_name_what_was_found(tmp_path) -> None:
    state = official_dinov2_state(0)
    del state["blocks.5.ls1.gamma"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken.pth.*missing keys: \['blocks.5.ls1.gamma'\]"):
        load_backbone(tmp_path / "broken.pth")
    torch.save({"embeddings.cls_token": torch.zeros(1, 1, 384), "encoder.layer.0.weird.weight": torch.zeros(1)},
               tmp_path / "odd.bin")  # fmt: skip
    with pytest.raises(CheckpointError, match="unexpected Hugging Face key 'encoder.layer.0.weird.weight'"):
        load_backbone(tmp_path / "odd.bin")


# ---------------------------------------------------------------------------- the model itself
def test_registers_follow_cls_after_positions_and_never_reach_outputs() -> None:
    model = load_backbone("random:dinov2_vits14_reg")
    x = images(112, 140, batch=1)
    tokens = model.prepare_tokens(x)
    assert tokens.shape == (1, 1 + 4 + 8 * 10, 384)
    # Registers carry no position: the inserted tokens equal the parameter itself.
    torch.testing.assert_close(tokens[0, 1:5], model.register_tokens[0])
    with torch.no_grad():
        out = model.forward_intermediates(x, 2, attention=True)
    assert out.tokens.shape == (1, 81, 384) and out.registers.shape == (1, 4, 384)
    assert out.attention.shape == (1, 6, 81, 81) and out.keys.shape == (1, 6, 81, 64)
    assert [t.shape for t in out.intermediates] == [(1, 81, 384)] * 2
    # The attention rows lose exactly the mass given to the registers: below 1, above 0.
    row_mass = out.attention.sum(-1)
    assert bool((row_mass < 1).all()) and bool((row_mass > 0).all())


def test_forward_intermediates_serves_every_entry_point() -> None:
    model = load_backbone("random:dinov2_vits14")
    x = images(98, 112, batch=1)
    with torch.no_grad():
        full = model.forward_intermediates(x, [3, -1])
        early = model.forward_intermediates(x, [3], stop_early=True)
        torch.testing.assert_close(model.forward_to_block(x, 4), early.tokens)
        torch.testing.assert_close(full.intermediates[0], early.tokens)
        torch.testing.assert_close(full.intermediates[1], model.forward_features(x))
        torch.testing.assert_close(model.get_intermediate_layers(x, 1)[0], model.forward_features(x))
        unnormed = model.forward_intermediates(x, [11], norm=False).intermediates[0]
        torch.testing.assert_close(model.norm(unnormed), full.tokens)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, [12])
