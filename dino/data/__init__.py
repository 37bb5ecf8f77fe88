"""Image input: robust file opening, folder datasets, the protocols' preprocessing, indexed masks and the DAVIS
folder layout."""

from dino.lazy import lazy_exports

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "ImageFolderDataset",
    "ImageLoadError",
    "davis_annotations",
    "davis_first_annotation",
    "davis_frames",
    "davis_sequences",
    "list_images",
    "make_transform",
    "mask_iou",
    "open_image",
    "read_indexed_png",
    "read_label_mask",
    "to_rgb",
    "voc_palette",
    "write_indexed_png",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "IMAGENET_MEAN": "dino.data.constants",
        "IMAGENET_STD": "dino.data.constants",
        "IMAGE_EXTENSIONS": "dino.data.io",
        "ImageFileDataset": "dino.data.datasets",
        "ImageFolderDataset": "dino.data.datasets",
        "ImageLoadError": "dino.data.io",
        "davis_annotations": "dino.data.davis",
        "davis_first_annotation": "dino.data.davis",
        "davis_frames": "dino.data.davis",
        "davis_sequences": "dino.data.davis",
        "list_images": "dino.data.io",
        "make_transform": "dino.data.transforms",
        "mask_iou": "dino.data.masks",
        "open_image": "dino.data.io",
        "read_indexed_png": "dino.data.masks",
        "read_label_mask": "dino.data.masks",
        "to_rgb": "dino.data.io",
        "voc_palette": "dino.data.masks",
        "write_indexed_png": "dino.data.masks",
    },
)
