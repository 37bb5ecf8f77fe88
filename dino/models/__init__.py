"""Backbones and heads."""

from dino.layers.dino_head import DINOHead
from dino.models.vision_transformer import (
    ARCHITECTURES,
    Intermediates,
    LastLayerOutput,
    VisionTransformer,
    build_vit,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
    vit_tiny,
)

__all__ = [
    "ARCHITECTURES",
    "DINOHead",
    "Intermediates",
    "LastLayerOutput",
    "VisionTransformer",
    "build_vit",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
