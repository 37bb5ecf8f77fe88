"""Backbones and heads."""

from dino.lazy import lazy_exports

__all__ = [
    "ARCHITECTURES",
    "Backbone",
    "DINOHead",
    "Intermediates",
    "LastLayerOutput",
    "ViTOptions",
    "VisionTransformer",
    "WeightsProvenance",
    "build_vit",
    "is_resnet",
    "vit_base",
    "vit_giant2",
    "vit_large",
    "vit_small",
    "vit_tiny",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ARCHITECTURES": "dino.models.architectures",
        "Backbone": "dino.models.backbone",
        "DINOHead": "dino.layers.dino_head",
        "Intermediates": "dino.models.vision_transformer",
        "LastLayerOutput": "dino.models.vision_transformer",
        "ViTOptions": "dino.models.vision_transformer",
        "VisionTransformer": "dino.models.vision_transformer",
        "WeightsProvenance": "dino.models.provenance",
        "build_vit": "dino.models.vision_transformer",
        "is_resnet": "dino.models.backbone",
        "vit_base": "dino.models.vision_transformer",
        "vit_giant2": "dino.models.vision_transformer",
        "vit_large": "dino.models.vision_transformer",
        "vit_small": "dino.models.vision_transformer",
        "vit_tiny": "dino.models.vision_transformer",
    },
)
