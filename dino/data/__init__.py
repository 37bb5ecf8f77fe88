"""Image input: robust file opening, folder datasets and the protocols' preprocessing."""

from dino.data.datasets import ImageFileDataset, ImageFolderDataset
from dino.data.io import IMAGE_EXTENSIONS, ImageLoadError, list_images, open_image, to_rgb
from dino.data.transforms import IMAGENET_MEAN, IMAGENET_STD, make_transform

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
