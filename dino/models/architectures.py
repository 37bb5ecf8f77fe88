"""The ViT variants by name (SPEC §1, §21): width, depth and heads. Import-light: no torch."""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "RESNET_ARCHITECTURES"]

# SPEC §1 and §21: embed_dim, depth, heads of each variant (qkv bias everywhere; mlp_ratio 4).
ARCHITECTURES: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_giant2": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}

# torchvision's ResNets by name and depth (SPEC §23, §24; :class:`dino.models.resnet.ResNetBackbone`), named here so
# that the config can validate `model.arch` without importing torch.
RESNET_ARCHITECTURES: dict[str, int] = {f"resnet{depth}": depth for depth in (18, 34, 50, 101, 152)}
