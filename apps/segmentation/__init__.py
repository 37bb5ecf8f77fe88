"""Object masks from the last layer's [CLS] self-attention (SPEC §10), a normalized-cut alternative, and
the PASCAL VOC12 Jaccard evaluation of the paper (Fig. 4)."""

from apps.segmentation.jaccard import best_mask_jaccard, jaccard
from apps.segmentation.masks import (
    cls_attention_maps,
    merge_heads,
    threshold_attention,
    upsample_nearest,
)
from apps.segmentation.ncut import NCUT_EPS, NCUT_TAU, ncut_foreground

__all__ = [
    "NCUT_EPS",
    "NCUT_TAU",
    "best_mask_jaccard",
    "cls_attention_maps",
    "jaccard",
    "merge_heads",
    "ncut_foreground",
    "threshold_attention",
    "upsample_nearest",
]
