"""The ViT against SPEC §1: attention paths, forward APIs, positional-embedding interpolation, and timm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dino.models import DINOHead, VisionTransformer, build_vit, vit_base, vit_small, vit_tiny


def _tiny(patch_size: int = 16, **kwargs) -> VisionTransformer:
    return vit_tiny(patch_size, **kwargs).eval()


def test_factories_match_spec_table() -> None:
    for factory, dim, heads in ((vit_tiny, 192, 3), (vit_small, 384, 6), (vit_base, 768, 12)):
        model = factory(8)
        assert (model.embed_dim, model.num_heads, len(model.blocks)) == (dim, heads, 12)
        assert model.blocks[0].mlp.fc1.out_features == 4 * dim
        assert model.blocks[0].norm1.eps == 1e-6 and model.norm.eps == 1e-6
        assert model.pos_embed.shape == (1, 1 + (224 // 8) ** 2, dim)
    # ViT-S/16 is DeiT-S: about 21.7M parameters (SPEC §1: "21M").
    assert 21e6 < sum(p.numel() for p in vit_small(16).parameters()) < 22.5e6


def test_sdpa_and_explicit_attention_agree() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 224, 160)
    with torch.no_grad():
        fused = model.forward_features(x)
        explicit = model.forward_with_attention(x)
        block = model.blocks[3].attn
        tokens = torch.randn(2, 50, 192)
        assert (block(tokens) - block.forward_explicit(tokens)[0]).abs().max() <= 1e-5
    assert (fused - explicit.tokens).abs().max() <= 1e-5


def test_explicit_attention_is_reference_softmax() -> None:
    """Recompute the last block's attention from its weights as the reference does."""
    model = _tiny()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        tokens = model.prepare_tokens(x)
        for block in model.blocks[:-1]:
            tokens = block(tokens)
        last = model.blocks[-1]
        normed = last.norm1(tokens)
        qkv = last.attn.qkv(normed).reshape(1, tokens.shape[1], 3, 3, 64).permute(2, 0, 3, 1, 4)
        expected = (qkv[0] @ qkv[1].transpose(-2, -1) * 64**-0.5).softmax(-1)
        attention = model.get_last_selfattention(x)
    assert attention.shape == (1, 3, 37, 37)
    torch.testing.assert_close(attention, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 3, 37))


def test_forward_apis_are_consistent() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        cls = model(x)
        last_two = model.get_intermediate_layers(x, n=2)
        with_attention = model.forward_with_attention(x)
    assert cls.shape == (2, 192)
    assert len(last_two) == 2 and last_two[1].shape == (2, 197, 192)
    torch.testing.assert_close(last_two[1][:, 0], cls)
    torch.testing.assert_close(with_attention.tokens[:, 0], cls, rtol=0, atol=1e-5)
    assert with_attention.keys.shape == (2, 3, 197, 64)
    # Each intermediate output is passed through the final norm: zero mean per token before the affine.
    assert not torch.allclose(last_two[0], last_two[1])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_to_block(x, 11), last_two[0])
        torch.testing.assert_close(model.forward_to_block(x, 12), last_two[1])
    for outside in (0, 13):
        with pytest.raises(ValueError, match="block must be in 1..12"):
            model.forward_to_block(x, outside)


@pytest.mark.parametrize("registers", [0, 4])
def test_cls_row_attention_is_row_0_of_the_explicit_attention(registers: int) -> None:
    model = vit_tiny(patch_size=16, num_register_tokens=registers).eval()
    with torch.no_grad():
        if registers:
            model.register_tokens.normal_()
        x = torch.randn(2, 3, 48, 80)
        full = model.forward_with_attention(x)
        row = model.forward_with_attention(x, rows="cls")
    assert row.attention.shape == (2, 3, 1, 1 + 15) and full.attention.shape == (2, 3, 16, 16)
    torch.testing.assert_close(row.attention, full.attention[:, :, :1], rtol=0, atol=1e-7)
    torch.testing.assert_close(row.tokens, full.tokens, rtol=0, atol=1e-5)  # fused vs explicit last block
    torch.testing.assert_close(row.keys, full.keys, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rows must be 'all' or 'cls'"):
        model.forward_with_attention(x, rows="patches")


def test_drop_path_rates_follow_linspace_and_only_act_in_training() -> None:
    model = vit_tiny(16, drop_path_rate=0.1)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 12).tolist())
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("patch_size", [16, 8])
def test_pos_embed_interpolation_shapes_non_square(patch_size: int) -> None:
    model = _tiny(patch_size)
    grid = (480 // patch_size, 832 // patch_size)
    for mode in ("reference", "exact"):
        model.pos_embed_interpolation = mode
        assert model.interpolate_pos_encoding(480, 832).shape == (1, 1 + grid[0] * grid[1], 192)
    with torch.no_grad():
        out = model.forward_with_attention(torch.randn(1, 3, 480, 832))
    n = grid[0] * grid[1]
    assert out.tokens.shape == (1, 1 + n, 192) and out.attention.shape == (1, 3, 1 + n, 1 + n)


def test_pos_embed_is_identity_at_training_size() -> None:
    model = _tiny(8)
    assert model.interpolate_pos_encoding(224, 224) is model.pos_embed
    assert model.interpolate_pos_encoding(231, 231) is model.pos_embed  # same 28×28 grid after the stride


def test_reference_resamples_non_square_pixels_on_the_training_grid() -> None:
    """The reference skips interpolation only if the token count matches *and* H == W in pixels."""
    model = _tiny(8)
    reference = model.interpolate_pos_encoding(231, 230)
    assert reference.shape == model.pos_embed.shape and not torch.equal(reference, model.pos_embed)
    model.pos_embed_interpolation = "exact"
    assert model.interpolate_pos_encoding(231, 230) is model.pos_embed


def test_reference_interpolation_uses_scale_factor_with_offset() -> None:
    """Restate SPEC §1 steps 1–4 independently and compare; `exact` must differ from it."""
    model = _tiny(16)
    height, width = 480, 832
    side = 14
    patch = model.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    h0, w0 = height // 16 + 0.1, width // 16 + 0.1
    expected = F.interpolate(patch, scale_factor=(h0 / math.sqrt(196), w0 / math.sqrt(196)), mode="bicubic")
    assert expected.shape[-2:] == (30, 52)
    expected = torch.cat((model.pos_embed[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 30 * 52, -1)), dim=1)
    reference = model.interpolate_pos_encoding(height, width)
    torch.testing.assert_close(reference, expected, rtol=0, atol=0)
    model.pos_embed_interpolation = "exact"
    exact = model.interpolate_pos_encoding(height, width)
    size_based = F.interpolate(patch, size=(30, 52), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 30 * 52, -1)
    torch.testing.assert_close(exact[:, 1:], size_based, rtol=0, atol=0)
    assert (exact - reference).abs().max() > 1e-4


def test_unknown_interpolation_and_arch_are_rejected() -> None:
    with pytest.raises(ValueError, match="pos_embed_interpolation"):
        vit_tiny(16, pos_embed_interpolation="bilinear")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_vit("vit_huge")


def test_matches_timm_vision_transformer() -> None:
    """timm's ViT is an independent implementation with the same keys (SPEC §7): same weights, same outputs."""
    timm = pytest.importorskip("timm")
    ours = vit_small(16).eval()
    theirs = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x), rtol=0, atol=2e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=2e-5)


def test_dino_head_layout_and_normalised_prototypes() -> None:
    head = DINOHead(192, 1000)
    keys = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert keys == {
        "mlp.0.weight": (2048, 192),
        "mlp.0.bias": (2048,),
        "mlp.2.weight": (2048, 2048),
        "mlp.2.bias": (2048,),
        "mlp.4.weight": (256, 2048),
        "mlp.4.bias": (256,),
        "last_layer.weight_g": (1000, 1),
        "last_layer.weight_v": (1000, 256),
    }
    assert not head.last_layer.weight_g.requires_grad
    assert DINOHead(192, 10, norm_last_layer=False).last_layer.weight_g.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(1000))
    x = torch.randn(4, 192)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    expected = bottleneck @ F.normalize(head.last_layer.weight_v, dim=1).T
    torch.testing.assert_close(head(x), expected)
    single = DINOHead(192, 10, nlayers=1)
    assert isinstance(single.mlp, torch.nn.Linear) and single.mlp.out_features == 256
