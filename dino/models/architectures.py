"""The ViT variants by name (SPEC §1, §21): width, depth and heads. Import-light: no torch."""

from __future__ import annotations

__all__ = ["ARCHITECTURES"]

# SPEC §1 and §21: embed_dim, depth, heads of each variant (qkv bias everywhere; mlp_ratio 4).
ARCHITECTURES: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_giant2": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}
