"""Building blocks of the DINO Vision Transformer and its projection head (SPEC §1, §2)."""

from dino.layers.attention import Attention
from dino.layers.block import Block, DropPath, LayerScale, Mlp, SwiGLUFFN
from dino.layers.dino_head import DINOHead, WeightNormLinear
from dino.layers.patch_embed import PatchEmbed

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
