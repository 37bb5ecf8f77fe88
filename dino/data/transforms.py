"""The evaluation protocols' exact preprocessing (SPEC §8, §10, §12, §13, §15.5).

Resizing is always done on the PIL image (torchvision's tensor Resize antialiases and would change the
numbers). Every transform ends with ToTensor and the ImageNet normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from dino.data.constants import IMAGENET_MEAN, IMAGENET_STD, KNN_CROP, KNN_RESIZE, PREPROCESSING

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESSING",
    "CropToMultiple",
    "denormalize",
    "short_side_transform",
    "Thumbnail",
    "knn_transform",
    "make_transform",
    "normalize",
    "planned_size",
    "square_transform",
    "thumbnail_transform",
]


ImageTransform = Callable[[Image.Image], Tensor]


def normalize() -> T.Compose:
    """ToTensor then ImageNet mean/std normalisation."""
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class CropToMultiple:
    """Crop the bottom and right of a (C, H, W) tensor so H and W are multiples of `multiple` (SPEC §10)."""

    def __init__(self, multiple: int) -> None:
        self.multiple = multiple

    def __call__(self, tensor: Tensor) -> Tensor:
        height = tensor.shape[-2] - tensor.shape[-2] % self.multiple
        width = tensor.shape[-1] - tensor.shape[-1] % self.multiple
        return tensor[..., :height, :width]

    def __repr__(self) -> str:
        return f"CropToMultiple({self.multiple})"


class Thumbnail:
    """PIL ``thumbnail((size, size))`` with Lanczos: keeps the aspect ratio and only ever shrinks (SPEC §13)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.copy()
        image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        return image

    def __repr__(self) -> str:
        return f"Thumbnail({self.size})"


def knn_transform(resize: int = KNN_RESIZE, crop: int = KNN_CROP) -> T.Compose:
    """k-NN / linear evaluation: Resize(256, bicubic) of the short side, CenterCrop(224) (SPEC §8)."""
    return T.Compose([T.Resize(resize, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(crop), normalize()])


def square_transform(
    size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR, patch_size: int | None = None
) -> T.Compose:
    """Resize to size×size ignoring the aspect ratio (attention maps: 480 bilinear; copy detection: 320 bicubic)."""
    steps: list[Callable] = [T.Resize((size, size), interpolation=interpolation), normalize()]
    if patch_size:
        steps.append(CropToMultiple(patch_size))
    return T.Compose(steps)


def short_side_transform(
    size: int, patch_size: int, interpolation: InterpolationMode = InterpolationMode.BILINEAR
) -> T.Compose:
    """Resize the short side to `size` keeping the aspect ratio, then crop to a multiple of the patch size."""
    return T.Compose([T.Resize(size, interpolation=interpolation), normalize(), CropToMultiple(patch_size)])


def thumbnail_transform(size: int) -> T.Compose:
    """Retrieval: thumbnail to fit size×size (never enlarges), keep the aspect ratio (SPEC §13)."""
    return T.Compose([Thumbnail(size), normalize()])


def make_transform(name: str, size: int | None = None, patch_size: int = 16) -> ImageTransform:
    """A protocol transform by name, for CLIs.

    Args:
        name: ``knn`` (resize 256 / crop 224, or crop `size` after resizing to size·256/224),
            ``square`` (size×size, bilinear), ``short-side`` (short side = size, aspect kept) or
            ``thumbnail`` (fit in size×size, never enlarge).
        size: Target size; each protocol has its reference default when None.
        patch_size: Used to crop variable-size inputs to a multiple of the patch size.

    Raises:
        ValueError: `size` is smaller than one patch.
    """
    if size is not None and size < patch_size:
        raise ValueError(f"size {size} is smaller than one {patch_size}-pixel patch")
    if name == "knn":
        crop = size or KNN_CROP
        return knn_transform(resize=round(crop * KNN_RESIZE / KNN_CROP), crop=crop)
    if name == "square":
        return square_transform(size or 480, patch_size=patch_size)
    if name == "short-side":
        return short_side_transform(size or 480, patch_size)
    if name == "thumbnail":
        return T.Compose([thumbnail_transform(size or 224), CropToMultiple(patch_size)])
    raise ValueError(f"unknown preprocessing {name!r}; choose one of {PREPROCESSING}")


def planned_size(transform: ImageTransform, width: int, height: int) -> tuple[int, int] | None:
    """(height, width) of the tensor `transform` makes from a width×height image, without running it.

    Known steps are this module's: ``Resize`` (short side or both sides), ``CenterCrop``, :class:`Thumbnail`,
    :class:`CropToMultiple`, and steps that keep the size (ToTensor, Normalize). Lets a caller refuse an input
    whose preprocessed size would be unreasonable before allocating it (a 10000×20 strip resized to a short side
    of 224 is 112000 pixels long).

    Returns:
        The size, or None when a step's effect on the size is unknown.
    """
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    for step in steps:
        if isinstance(step, T.Compose):
            planned = planned_size(step, width, height)
            if planned is None:
                return None
            height, width = planned
        elif isinstance(step, T.Resize):
            height, width = _resized(step, width, height)
        elif isinstance(step, T.CenterCrop):
            height, width = step.size
        elif isinstance(step, Thumbnail):
            height, width = _thumbnail_size(step.size, width, height)
        elif isinstance(step, CropToMultiple):
            height, width = height - height % step.multiple, width - width % step.multiple
        elif not isinstance(step, (T.ToTensor, T.Normalize)):
            return None
    return height, width


def _resized(step: T.Resize, width: int, height: int) -> tuple[int, int]:
    """torchvision's ``Resize`` rule: an int (or one-element) size sets the short side, the long one is truncated."""
    size = [step.size] if isinstance(step.size, int) else list(step.size)
    if len(size) == 2:
        return size[0], size[1]
    short, long = min(width, height), max(width, height)
    new_short, new_long = size[0], int(size[0] * long / short)
    if step.max_size is not None and new_long > step.max_size:
        new_short, new_long = int(step.max_size * new_short / new_long), step.max_size
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _thumbnail_size(size: int, width: int, height: int) -> tuple[int, int]:
    """(height, width) after ``thumbnail((size, size))``: never enlarged, aspect kept (rounded within a pixel)."""
    if width <= size and height <= size:
        return height, width
    scale = size / max(width, height)
    return max(round(height * scale), 1), max(round(width * scale), 1)


def denormalize(tensor: Tensor) -> Tensor:
    """Undo the ImageNet normalisation of a (…, 3, H, W) tensor, clamped to [0, 1] (for figures)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    return (tensor * std + mean).clamp(0, 1)
