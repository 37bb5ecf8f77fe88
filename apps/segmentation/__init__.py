"""Object masks from the last layer's [CLS] self-attention (SPEC §10), a normalized-cut alternative, and
the PASCAL VOC12 Jaccard evaluation of the paper (Fig. 4)."""

from dino.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "NCUT_EPS": "apps.segmentation.ncut",
        "NCUT_TAU": "apps.segmentation.ncut",
        "best_mask_jaccard": "apps.segmentation.jaccard",
        "cls_attention_maps": "apps.segmentation.masks",
        "jaccard": "apps.segmentation.jaccard",
        "merge_heads": "apps.segmentation.masks",
        "ncut_foreground": "apps.segmentation.ncut",
        "threshold_attention": "apps.segmentation.masks",
        "upsample_nearest": "apps.segmentation.masks",
    },
)
