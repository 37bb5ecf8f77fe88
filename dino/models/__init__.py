"""Backbones and heads."""

from dino.layers.dino_head import DINOHead
from dino.models.vision_transformer import (
    ARCHITECTURES,
    LastLayerOutput,
    VisionTransformer,
    build_vit,
    vit_base,
    vit_small,
    vit_tiny,
)

__all__ = [
    "ARCHITECTURES",
    "DINOHead",
    "LastLayerOutput",
    "VisionTransformer",
    "build_vit",
    "vit_base",
    "vit_small",
    "vit_tiny",
]
