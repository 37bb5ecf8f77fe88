"""Building blocks of the DINO Vision Transformer and its projection head (SPEC §1, §2)."""

from dino.lazy import lazy_exports

__all__ = [
    "Attention",
    "Block",
    "DINOHead",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "WeightNormLinear",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Attention": "dino.layers.attention",
        "Block": "dino.layers.block",
        "DINOHead": "dino.layers.dino_head",
        "DropPath": "dino.layers.block",
        "LayerScale": "dino.layers.block",
        "Mlp": "dino.layers.block",
        "PatchEmbed": "dino.layers.patch_embed",
        "SwiGLUFFN": "dino.layers.block",
        "WeightNormLinear": "dino.layers.dino_head",
    },
)
