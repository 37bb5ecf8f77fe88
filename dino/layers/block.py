"""Pre-norm transformer block, MLP / SwiGLU feed-forward, LayerScale and stochastic depth (SPEC §1, §21)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.layers.attention import Attention

LAYER_NORM_EPS = 1e-6

FeedForward = Literal["mlp", "swiglu"]


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Per-sample stochastic depth: drop the whole residual branch of a sample with `drop_prob`."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = x.new_empty(shape).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf) -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden_dim(dim: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLU width: 2/3 of the MLP's hidden width, rounded up to a multiple of 8 (4096 for ViT-g)."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nn.Module):
    """DINOv2's ``SwiGLUFFNFused`` (ViT-g): ``w3(silu(a) * b)`` with ``a, b = w12(x).chunk(2)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Per-channel scaling of a residual branch (DINOv2, CaiT), parameter ``gamma`` of shape (D,)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class BlockAttentionOutput(NamedTuple):
    """What :meth:`Block.forward_with_attention` returns."""

    tokens: Tensor
    attention: Tensor
    keys: Tensor


class Block(nn.Module):
    """``x + drop_path(ls1(attn(norm1(x))))`` then ``x + drop_path(ls2(ffn(norm2(x))))``.

    Args:
        dim: Token dimension D.
        num_heads: Attention heads.
        mlp_ratio: Feed-forward hidden width as a multiple of D (SwiGLU takes 2/3 of it, see
            :func:`swiglu_hidden_dim`).
        qkv_bias: Bias in the qkv projection.
        drop_path_rate: Stochastic-depth probability of both residual branches.
        layer_scale_init: Initial LayerScale value (DINOv2: 1e-5 for training; its releases hold the learned
            values); ``None`` for no LayerScale (DINO v1), which leaves the computation exactly as before.
        ffn: ``mlp`` (fc1, GELU, fc2) or ``swiglu`` (DINOv2 ViT-g).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        ffn: FeedForward = "mlp",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        if ffn == "mlp":
            self.mlp: nn.Module = Mlp(dim, int(dim * mlp_ratio))
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, swiglu_hidden_dim(dim, mlp_ratio))
        else:
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def forward_with_attention(self, x: Tensor, cls_row_only: bool = False) -> BlockAttentionOutput:
        """The block's output with its attention weights and keys: through the explicit path (every row), or with
        `cls_row_only` through the fused one plus the [CLS] query's row."""
        attend = self.attn.forward_cls_row if cls_row_only else self.attn.forward_explicit
        attn_out, attention, keys = attend(self.norm1(x))
        x = x + self.drop_path(self.ls1(attn_out))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return BlockAttentionOutput(x, attention, keys)
