"""Vision Transformer with the exact parameter layout of the DINO releases.

References:
    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (facebookresearch/dino, ``vision_transformer.py``); Dosovitskiy et al., "An Image is Worth
    16x16 Words", ICLR 2021; timm's ``vision_transformer.py``.

The state-dict keys are those of the official backbone files (SPEC §7), so
``load_state_dict(strict=True)`` accepts them unchanged. Every block runs its attention through
:func:`torch.nn.functional.scaled_dot_product_attention`; only a call that asks for attention
weights (or keys) runs the last block through the explicit softmax path.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.layers.block import LAYER_NORM_EPS, Block
from dino.layers.init import init_linear, trunc_normal_
from dino.layers.patch_embed import PatchEmbed

__all__ = [
    "ARCHITECTURES",
    "LastLayerOutput",
    "PosEmbedInterpolation",
    "VisionTransformer",
    "build_vit",
    "vit_base",
    "vit_small",
    "vit_tiny",
]

PosEmbedInterpolation = Literal["reference", "exact"]

# SPEC §1: the reference adds 0.1 to the target grid before computing the bicubic scale factor (dino #8).
REFERENCE_INTERPOLATION_OFFSET = 0.1

# SPEC §1 table: embed_dim, depth, heads for each variant (mlp_ratio 4, qkv_bias True everywhere).
ARCHITECTURES: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


class LastLayerOutput(NamedTuple):
    """One forward pass's results for the apps.

    Attributes:
        tokens: All tokens of the last block after the final norm, (B, 1+N, D), [CLS] first.
        attention: Last block's attention probabilities, (B, heads, 1+N, 1+N).
        keys: Last block's keys, (B, heads, 1+N, head_dim).
    """

    tokens: Tensor
    attention: Tensor
    keys: Tensor


class VisionTransformer(nn.Module):
    """The DINO ViT backbone (SPEC §1): pre-norm blocks, learned absolute positions, a [CLS] token.

    Args:
        img_size: Training resolution that sizes `pos_embed` ((img_size/p)² patch positions).
        patch_size: Patch size p.
        in_chans: Input channels.
        embed_dim: Token dimension D.
        depth: Number of blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: Bias in the qkv projection.
        drop_path_rate: Stochastic-depth rate of the last block; block i gets ``linspace(0, rate, depth)[i]``.
        pos_embed_interpolation: ``"reference"`` reproduces DINO (bicubic with ``scale_factor`` and the
            +0.1 offset); ``"exact"`` resamples with ``size=`` to the exact target grid.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        pos_embed_interpolation: PosEmbedInterpolation = "reference",
    ) -> None:
        super().__init__()
        if pos_embed_interpolation not in ("reference", "exact"):
            raise ValueError(f"pos_embed_interpolation must be 'reference' or 'exact', got {pos_embed_interpolation!r}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.img_size = img_size
        self.pos_embed_interpolation = pos_embed_interpolation
        num_patches = (img_size // patch_size) ** 2

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path_rate=rate) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

        trunc_normal_(self.pos_embed)
        trunc_normal_(self.cls_token)
        self.apply(init_linear)

    # ---------------------------------------------------------------- tokens
    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """Positional embedding for an input of `height`×`width` pixels, shape (1, 1+h·w, D).

        Returns `pos_embed` unchanged when the grid equals the training grid. In ``reference`` mode the
        input must also be square in pixels, as in the reference, which resamples (slightly) for e.g.
        231×230 inputs even though their grid is the training grid.
        """
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        num_trained = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(num_trained))
        same_grid = grid_h == side and grid_w == side
        if same_grid and (height == width or self.pos_embed_interpolation == "exact"):
            return self.pos_embed
        class_pos = self.pos_embed[:, :1]
        patch_pos = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.pos_embed_interpolation == "reference":
            target_h = grid_h + REFERENCE_INTERPOLATION_OFFSET
            target_w = grid_w + REFERENCE_INTERPOLATION_OFFSET
            patch_pos = F.interpolate(patch_pos, scale_factor=(target_h / side, target_w / side), mode="bicubic")
        else:
            patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic")
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"positional-embedding grid {tuple(patch_pos.shape[-2:])} != {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((class_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Patch-embed an image batch (B, C, H, W), prepend [CLS] and add positions: (B, 1+N, D)."""
        batch, _, height, width = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(height, width).to(tokens.dtype)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an input of `height`×`width` pixels."""
        return height // self.patch_size, width // self.patch_size

    # ---------------------------------------------------------------- forwards
    def forward_features(self, x: Tensor) -> Tensor:
        """All tokens after the last block and the final norm, (B, 1+N, D)."""
        x = self.prepare_tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """The [CLS] token after the final norm, (B, D)."""
        return self.forward_features(x)[:, 0]

    def forward_to_block(self, x: Tensor, block: int) -> Tensor:
        """All tokens after block `block` (1-based; the later blocks are not run), through the final norm."""
        if not 1 <= block <= len(self.blocks):
            raise ValueError(f"block must be in 1..{len(self.blocks)}, got {block}")
        x = self.prepare_tokens(x)
        for layer in self.blocks[:block]:
            x = layer(x)
        return self.norm(x)

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        """The outputs of the last `n` blocks, each passed through the final norm, all tokens kept."""
        x = self.prepare_tokens(x)
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index >= len(self.blocks) - n:
                outputs.append(self.norm(x))
        return outputs

    def forward_with_attention(self, x: Tensor) -> LastLayerOutput:
        """One pass that returns the normalised last-block tokens, its attention and its keys."""
        x = self.prepare_tokens(x)
        for block in self.blocks[:-1]:
            x = block(x)
        out = self.blocks[-1].forward_with_attention(x)
        return LastLayerOutput(self.norm(out.tokens), out.attention, out.keys)

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Attention probabilities of the last block, (B, heads, 1+N, 1+N)."""
        return self.forward_with_attention(x).attention


def build_vit(arch: str, patch_size: int = 16, **kwargs: object) -> VisionTransformer:
    """Build a ViT by architecture name (``vit_tiny``, ``vit_small``, ``vit_base``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return VisionTransformer(patch_size=patch_size, **ARCHITECTURES[arch], **kwargs)  # type: ignore[arg-type]


def vit_tiny(patch_size: int = 16, **kwargs: object) -> VisionTransformer:
    """ViT-T: D=192, 12 blocks, 3 heads."""
    return build_vit("vit_tiny", patch_size, **kwargs)


def vit_small(patch_size: int = 16, **kwargs: object) -> VisionTransformer:
    """ViT-S (DeiT-S): D=384, 12 blocks, 6 heads."""
    return build_vit("vit_small", patch_size, **kwargs)


def vit_base(patch_size: int = 16, **kwargs: object) -> VisionTransformer:
    """ViT-B: D=768, 12 blocks, 12 heads."""
    return build_vit("vit_base", patch_size, **kwargs)
