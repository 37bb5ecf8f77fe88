"""Multi-head self-attention with a fused (SDPA) path and an explicit path that returns the weights."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with the DINO parameter layout (`qkv`, `proj`).

    The fused path calls :func:`torch.nn.functional.scaled_dot_product_attention`, which never
    materialises the attention matrix. The explicit path computes ``softmax(q kᵀ · scale)`` as the
    reference does and is used only when the caller asks for the attention weights or the keys.

    Args:
        dim: Token dimension D.
        num_heads: Number of heads; D must be divisible by it.
        qkv_bias: Whether the qkv projection has a bias (True in every DINO release).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge_heads(self, x: Tensor) -> Tensor:
        batch, _, tokens, _ = x.shape
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, -1))

    def forward(self, x: Tensor) -> Tensor:
        """Fused attention: (B, N, D) -> (B, N, D)."""
        q, k, v = self._qkv(x)
        return self._merge_heads(F.scaled_dot_product_attention(q, k, v))

    def forward_cls_row(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fused attention, plus the [CLS] query's row of the attention probabilities.

        The row is ``softmax(q₀ kᵀ · scale)``, what :meth:`forward_explicit` returns in row 0, at O(N) instead of
        the O(N²) memory of the whole matrix (311 MB per image for a ViT-S/8 at 480²).

        Returns:
            The output (B, N, D), the [CLS] row (B, heads, 1, N) and the keys (B, heads, N, head_dim).
        """
        q, k, v = self._qkv(x)
        row = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self._merge_heads(F.scaled_dot_product_attention(q, k, v)), row, k

    def forward_explicit(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Explicit attention as in the reference.

        Returns:
            The output (B, N, D), the attention probabilities (B, heads, N, N) and the keys
            (B, heads, N, head_dim).
        """
        q, k, v = self._qkv(x)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self._merge_heads(attn @ v), attn, k
