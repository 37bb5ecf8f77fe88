"""The reference ViT (facebookresearch/dino ``vision_transformer.py``), re-expressed small, for speed comparisons.

It keeps the reference's operations and their order: explicit attention in every block (``(q @ kᵀ) * scale``,
softmax, ``@ v``), the position grid resampled bicubically with ``scale_factor`` from the grid plus 0.1,
``get_last_selfattention`` returning the last block's weights without running its MLP, and
``get_intermediate_layers`` normalising the outputs of the last n blocks. Dropout and stochastic depth are
left out (identities at inference). The parameter names are the reference's, so a DINO v1 state dict, and
therefore the project's own ViT's, loads strictly: :func:`from_project` builds one that holds exactly the
weights of a project model. Do not optimise this file; its point is to be the baseline
(``bench/reference_speed.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ReferenceViT", "from_project"]

LAYER_NORM_EPS = 1e-6


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(x), attn


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor:
        y, attn = self.attn(self.norm1(x))
        if return_attention:
            return attn
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ReferenceViT(nn.Module):
    """The reference VisionTransformer at inference (no classifier head: ``num_classes=0``)."""

    def __init__(
        self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 384, depth: int = 12, num_heads: int = 6
    ) -> None:
        super().__init__()
        self.patch_size = patch_size  # the reference reads args.patch_size; the video port reads this
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def interpolate_pos_encoding(self, x: Tensor, w: int, h: int) -> Tensor:
        # As in the reference, `w` is the input's height and `h` its width (prepare_tokens unpacks B, C, w, h).
        npatch = x.shape[1] - 1
        trained = self.pos_embed.shape[1] - 1
        if npatch == trained and w == h:
            return self.pos_embed
        class_pos_embed = self.pos_embed[:, 0]
        patch_pos_embed = self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_embed.patch_size + 0.1
        h0 = h // self.patch_embed.patch_size + 0.1
        side = math.sqrt(trained)
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed.reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / side, h0 / side),
            mode="bicubic",
        )
        assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        batch, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prepare_tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        x = self.prepare_tokens(x)
        for index, block in enumerate(self.blocks):
            if index < len(self.blocks) - 1:
                x = block(x)
            else:
                return block(x, return_attention=True)
        raise ValueError("a ViT without blocks has no attention")

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        x = self.prepare_tokens(x)
        output = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if len(self.blocks) - index <= n:
                output.append(self.norm(x))
        return output


def from_project(model: nn.Module) -> ReferenceViT:
    """A :class:`ReferenceViT` holding exactly the weights of a project ViT (``dino.models.VisionTransformer``).

    Raises:
        ValueError: The model has parts the DINO v1 reference does not (LayerScale, registers, SwiGLU), or
            resamples its positions another way than the reference's.
    """
    extras = []
    if getattr(model, "layer_scale", False):
        extras.append("LayerScale")
    if getattr(model, "num_register_tokens", 0):
        extras.append("register tokens")
    if getattr(model, "ffn", "mlp") != "mlp":
        extras.append("SwiGLU")
    if getattr(model, "pos_embed_interpolation", "reference") != "reference":
        extras.append(f"{model.pos_embed_interpolation!r} position interpolation")
    if extras:
        raise ValueError(
            f"the reference DINO v1 ViT has no {', '.join(extras)}: compare with DINO v1 weights "
            "(e.g. random:vit_small/16 or dino_vits8)"
        )
    side = math.isqrt(model.pos_embed.shape[1] - 1)
    reference = ReferenceViT(
        img_size=side * model.patch_size,
        patch_size=model.patch_size,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=model.num_heads,
    )
    reference.load_state_dict(model.state_dict(), strict=True)
    return reference.eval()
