"""Vision Transformer with the exact parameter layout of the DINO and DINOv2 releases.

References:
    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (facebookresearch/dino, ``vision_transformer.py``); Oquab et al., "DINOv2", TMLR 2024 and Darcet et al.,
    "Vision Transformers Need Registers", ICLR 2024 (facebookresearch/dinov2, ``models/vision_transformer.py``);
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; timm's ``vision_transformer.py``.

The state-dict keys are those of the official backbone files (SPEC §7, §21), so
``load_state_dict(strict=True)`` accepts them unchanged. DINOv2 adds LayerScale (``ls1``/``ls2``), register
tokens, a ``mask_token`` (kept for loading, unused at inference), patch 14 and SwiGLU for ViT-g; a DINO v1
model has none of them and computes exactly what it did before they existed.

Every block runs its attention through :func:`torch.nn.functional.scaled_dot_product_attention`; only a call
that asks for attention weights (or keys) runs the last block it needs through the explicit softmax path. One
block loop, :meth:`VisionTransformer.forward_intermediates`, serves every entry point.

Register tokens never reach the apps: every output (tokens, attention, keys) is ``[CLS] + patches``, with the
register rows and columns taken out; :attr:`Intermediates.registers` returns them when asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import Unpack

from dino.layers.block import LAYER_NORM_EPS, Block, FeedForward
from dino.layers.init import init_linear, trunc_normal_
from dino.layers.patch_embed import PatchEmbed
from dino.models.architectures import ARCHITECTURES
from dino.models.provenance import WeightsProvenance

__all__ = [
    "ARCHITECTURES",
    "POS_EMBED_INTERPOLATIONS",
    "Intermediates",
    "LastLayerOutput",
    "PosEmbedInterpolation",
    "VisionTransformer",
    "ViTOptions",
    "build_vit",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
    "vit_tiny",
]

PosEmbedInterpolation = Literal["reference", "exact", "exact_antialias"]
# How the learned position grid is resampled to another input size (SPEC §1, §21):
#   reference       bicubic with scale_factor (grid + 0.1) / side: DINO v1 and the plain DINOv2 releases;
#   exact           bicubic to the exact grid with size=, no antialias: Hugging Face transformers;
#   exact_antialias bicubic to the exact grid with antialias: DINOv2's `_reg` releases and timm.
POS_EMBED_INTERPOLATIONS: tuple[str, ...] = ("reference", "exact", "exact_antialias")

# SPEC §1: the reference adds 0.1 to the target grid before computing the bicubic scale factor (dino #8).
REFERENCE_INTERPOLATION_OFFSET = 0.1

# Which query rows of the last block's attention a pass returns: every one, or only the [CLS] token's.
AttentionRows = Literal["all", "cls"]


class LastLayerOutput(NamedTuple):
    """One forward pass's results for the apps (register tokens taken out).

    Attributes:
        tokens: All tokens of the last block after the final norm, (B, 1+N, D), [CLS] first.
        attention: Last block's attention probabilities, (B, heads, 1+N, 1+N), or the [CLS] query's row only,
            (B, heads, 1, 1+N); with registers, their rows and columns are removed, so a row sums to 1 minus the
            mass the token gave the registers.
        keys: Last block's keys, (B, heads, 1+N, head_dim).
    """

    tokens: Tensor
    attention: Tensor
    keys: Tensor


class Intermediates(NamedTuple):
    """What :meth:`VisionTransformer.forward_intermediates` returns.

    Attributes:
        tokens: ``[CLS] + patches`` after the last block run, through the final norm when asked, (B, 1+N, D).
        intermediates: ``[CLS] + patches`` after each requested block, in block order.
        attention: The last run block's attention over ``[CLS] + patches`` (see :class:`LastLayerOutput`), or
            None unless requested.
        keys: The last run block's keys of ``[CLS] + patches``, or None unless requested.
        registers: The register tokens after the last block run (normalised like `tokens`), (B, R, D).
    """

    tokens: Tensor
    intermediates: list[Tensor]
    attention: Tensor | None
    keys: Tensor | None
    registers: Tensor


class VisionTransformer(nn.Module):
    """The DINO / DINOv2 ViT backbone (SPEC §1, §21): pre-norm blocks, learned absolute positions, a [CLS]
    token, and optionally LayerScale, register tokens and SwiGLU.

    Args:
        img_size: Training resolution that sizes `pos_embed` ((img_size/p)² patch positions; 518 for DINOv2).
        patch_size: Patch size p.
        in_chans: Input channels.
        embed_dim: Token dimension D.
        depth: Number of blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: Bias in the qkv projection.
        drop_path_rate: Stochastic-depth rate of the last block; block i gets ``linspace(0, rate, depth)[i]``.
        pos_embed_interpolation: How positions are resampled to other sizes (see ``POS_EMBED_INTERPOLATIONS``).
        layer_scale_init: LayerScale initial value, or None for none (DINO v1).
        num_register_tokens: Register tokens inserted after [CLS], after the position embedding (DINOv2 `_reg`).
        ffn: ``mlp`` or ``swiglu`` (DINOv2 ViT-g).
        mask_token: Hold DINOv2's ``mask_token`` (1, D) so its releases load strictly; never used at inference.
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
        layer_scale_init: float | None = None,
        num_register_tokens: int = 0,
        ffn: FeedForward = "mlp",
        mask_token: bool = False,
    ) -> None:
        super().__init__()
        if pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(
                f"pos_embed_interpolation must be one of {POS_EMBED_INTERPOLATIONS}, got {pos_embed_interpolation!r}"
            )
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.img_size = img_size
        self.pos_embed_interpolation = pos_embed_interpolation
        self.num_register_tokens = num_register_tokens
        self.layer_scale = layer_scale_init is not None
        self.ffn = ffn
        # Set by dino.checkpoint.load_backbone; None for a model built here (random weights or loaded otherwise).
        self.provenance: WeightsProvenance | None = None
        num_patches = (img_size // patch_size) ** 2

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        if num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path_rate=rate,
                layer_scale_init=layer_scale_init,
                ffn=ffn,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

        trunc_normal_(self.pos_embed)
        trunc_normal_(self.cls_token)
        if num_register_tokens:
            nn.init.normal_(self.register_tokens, std=1e-6)
        self.apply(init_linear)

    # ---------------------------------------------------------------- tokens
    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """Positional embedding for an input of `height`×`width` pixels, shape (1, 1+h·w, D).

        Returns `pos_embed` unchanged when the grid equals the training grid and the input is square in pixels;
        like DINO and DINOv2, the ``reference`` mode resamples (slightly) for e.g. 231×230 inputs even though
        their grid is the training grid. The exact modes are the identity on the training grid.
        """
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        num_trained = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(num_trained))
        same_grid = grid_h == side and grid_w == side
        if same_grid and (height == width or self.pos_embed_interpolation != "reference"):
            return self.pos_embed
        class_pos = self.pos_embed[:, :1]
        patch_pos = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.pos_embed_interpolation == "reference":
            target_h = grid_h + REFERENCE_INTERPOLATION_OFFSET
            target_w = grid_w + REFERENCE_INTERPOLATION_OFFSET
            patch_pos = F.interpolate(patch_pos, scale_factor=(target_h / side, target_w / side), mode="bicubic")
        else:
            antialias = self.pos_embed_interpolation == "exact_antialias"
            patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=antialias)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"positional-embedding grid {tuple(patch_pos.shape[-2:])} != {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((class_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Patch-embed an image batch (B, C, H, W), prepend [CLS], add positions, then insert the registers
        after [CLS] (they get no position): (B, 1+R+N, D)."""
        batch, _, height, width = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(height, width).to(tokens.dtype)
        if self.num_register_tokens:
            registers = self.register_tokens.expand(batch, -1, -1).to(tokens.dtype)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        return tokens

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an input of `height`×`width` pixels."""
        return height // self.patch_size, width // self.patch_size

    def _without_registers(self, tokens: Tensor) -> Tensor:
        """Take the register tokens out of (…, 1+R+N, D) along the token axis -2."""
        if not self.num_register_tokens:
            return tokens
        return torch.cat((tokens[..., :1, :], tokens[..., 1 + self.num_register_tokens :, :]), dim=-2)

    # ---------------------------------------------------------------- the block loop
    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = True,
        stop_early: bool = False,
        attention: bool = False,
        attention_rows: AttentionRows = "all",
    ) -> Intermediates:
        """Run the blocks once, keeping the outputs of some of them (timm's ``forward_intermediates``).

        Args:
            x: Images (B, C, H, W).
            indices: An int n takes the last n blocks; a sequence takes those block indices (0-based, negative
                from the end); None takes none.
            norm: Pass `tokens`, `intermediates` and `registers` through the final norm.
            stop_early: Stop after the last requested block instead of running them all.
            attention: Return the last run block's attention and keys.
            attention_rows: ``all`` (the explicit path, every query's row) or ``cls`` (the fused path plus the
                [CLS] query's row only, (B, heads, 1, 1+N): all that attention maps and masks read).

        Returns:
            :class:`Intermediates`; every token tensor is ``[CLS] + patches``.
        """
        depth = len(self.blocks)
        if indices is None:
            wanted: list[int] = []
        elif isinstance(indices, int):
            if not 0 <= indices <= depth:
                raise ValueError(f"the last n blocks: n must be in 0..{depth}, got {indices}")
            wanted = list(range(depth - indices, depth))
        else:
            if any(not -depth <= index < depth for index in indices):
                raise ValueError(f"block indices {list(indices)} out of range for {depth} blocks")
            wanted = sorted({index % depth for index in indices})
        last = wanted[-1] + 1 if stop_early and wanted else depth

        finish = self.norm if norm else nn.Identity()
        x = self.prepare_tokens(x)
        kept, attn, keys = [], None, None
        for index, block in enumerate(self.blocks[:last]):
            if attention and index == last - 1:
                x, attn, keys = block.forward_with_attention(x, cls_row_only=attention_rows == "cls")
            else:
                x = block(x)
            if index in wanted:
                kept.append(self._without_registers(finish(x)))
        out = finish(x)
        registers = out[:, 1 : 1 + self.num_register_tokens]
        if attn is not None and self.num_register_tokens:
            attn = self._without_registers(self._without_registers(attn).transpose(-1, -2)).transpose(-1, -2)
        if keys is not None:
            keys = self._without_registers(keys)
        return Intermediates(self._without_registers(out), kept, attn, keys, registers)

    # ---------------------------------------------------------------- entry points
    def forward_features(self, x: Tensor) -> Tensor:
        """``[CLS] + patches`` after the last block and the final norm, (B, 1+N, D)."""
        return self.forward_intermediates(x).tokens

    def forward(self, x: Tensor) -> Tensor:
        """The [CLS] token after the final norm, (B, D)."""
        return self.forward_features(x)[:, 0]

    def forward_to_block(self, x: Tensor, block: int) -> Tensor:
        """``[CLS] + patches`` after block `block` (1-based; the later blocks are not run), through the final norm."""
        if not 1 <= block <= len(self.blocks):
            raise ValueError(f"block must be in 1..{len(self.blocks)}, got {block}")
        return self.forward_intermediates(x, [block - 1], stop_early=True).tokens

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        """The outputs of the last `n` blocks, each passed through the final norm, ``[CLS] + patches``."""
        return self.forward_intermediates(x, n).intermediates

    def forward_with_attention(self, x: Tensor, rows: AttentionRows = "all") -> LastLayerOutput:
        """One pass that returns the normalised last-block tokens, its attention (every row, or with
        ``rows="cls"`` the [CLS] query's only) and its keys."""
        if rows not in ("all", "cls"):
            raise ValueError(f"rows must be 'all' or 'cls', got {rows!r}")
        out = self.forward_intermediates(x, attention=True, attention_rows=rows)
        assert out.attention is not None and out.keys is not None
        return LastLayerOutput(out.tokens, out.attention, out.keys)

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Attention probabilities of the last block, (B, heads, 1+N, 1+N)."""
        return self.forward_with_attention(x).attention


class ViTOptions(TypedDict, total=False):
    """The :class:`VisionTransformer` arguments a factory passes on: the table's size of an architecture
    (``embed_dim``, ``depth``, ``num_heads``) can be overridden, and the DINOv2 options set."""

    img_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    drop_path_rate: float
    pos_embed_interpolation: PosEmbedInterpolation
    layer_scale_init: float | None
    num_register_tokens: int
    ffn: FeedForward
    mask_token: bool


def build_vit(arch: str, patch_size: int = 16, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """Build a ViT by architecture name (``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``,
    ``vit_giant2``); `options` override the table (e.g. ``depth``) or set the DINOv2 options."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return VisionTransformer(patch_size=patch_size, **{**ARCHITECTURES[arch], **options})  # type: ignore[arg-type]


def vit_tiny(patch_size: int = 16, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-T: D=192, 12 blocks, 3 heads."""
    return build_vit("vit_tiny", patch_size, **options)


def vit_small(patch_size: int = 16, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-S (DeiT-S): D=384, 12 blocks, 6 heads."""
    return build_vit("vit_small", patch_size, **options)


def vit_base(patch_size: int = 16, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-B: D=768, 12 blocks, 12 heads."""
    return build_vit("vit_base", patch_size, **options)


def vit_large(patch_size: int = 14, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-L: D=1024, 24 blocks, 16 heads (DINOv2)."""
    return build_vit("vit_large", patch_size, **options)


def vit_giant2(patch_size: int = 14, **options: Unpack[ViTOptions]) -> VisionTransformer:
    """ViT-g as DINOv2 builds it: D=1536, 40 blocks, 24 heads, SwiGLU."""
    return build_vit("vit_giant2", patch_size, **{"ffn": "swiglu", **options})
