"""Image to patch tokens (SPEC §1)."""

from __future__ import annotations

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """A p×p stride-p convolution; the bottom/right remainder of a size not divisible by p is dropped."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, (H//p)·(W//p), D), row-major over the patch grid."""
        return self.proj(x).flatten(2).transpose(1, 2)
