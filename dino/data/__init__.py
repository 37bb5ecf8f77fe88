"""Image input: robust file opening, folder datasets and the protocols' preprocessing."""

from dino.lazy import lazy_exports

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "ImageFolderDataset",
    "ImageLoadError",
    "list_images",
    "make_transform",
    "open_image",
    "to_rgb",
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
        "list_images": "dino.data.io",
        "make_transform": "dino.data.transforms",
        "open_image": "dino.data.io",
        "to_rgb": "dino.data.io",
    },
)
