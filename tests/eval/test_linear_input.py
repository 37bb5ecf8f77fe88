"""The linear probe's inputs: the reference's interleaved layout and DINOv2's [CLS] ⊕ mean patch token."""

from __future__ import annotations

import torch

from dino.checkpoint import load_backbone
from dino.eval.linear import linear_features


def test_dinov2_input_is_cls_tokens_then_the_mean_patch_token_without_registers() -> None:
    model = load_backbone("random:dinov2_vits14_reg")
    images = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        blocks = model.get_intermediate_layers(images, 4)
        features = linear_features(model, images, 4, avgpool=False, layout="dinov2")
        out = model.forward_intermediates(images, 1)
    assert features.shape == (2, 5 * 384)
    torch.testing.assert_close(features[:, : 4 * 384], torch.cat([b[:, 0] for b in blocks], dim=-1))
    # 4×5 patches; the registers' outputs are not averaged in.
    torch.testing.assert_close(features[:, 4 * 384 :], out.tokens[:, 1:].mean(dim=1))
    assert out.tokens.shape[1] == 1 + 20
    with_registers = torch.cat((out.tokens[:, 1:], out.registers), dim=1).mean(dim=1)
    assert not torch.allclose(features[:, 4 * 384 :], with_registers)


def test_reference_input_interleaves_cls_and_mean_patch_token() -> None:
    model = load_backbone("random:vit_tiny/16")
    images = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        tokens = model.forward_features(images)
        features = linear_features(model, images, 1, avgpool=True)
    expected = torch.stack((tokens[:, 0], tokens[:, 1:].mean(dim=1)), dim=-1).reshape(1, -1)
    torch.testing.assert_close(features, expected)
