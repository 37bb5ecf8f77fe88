"""One batched forward pass per image giving everything the masks need: a ViT's [CLS] attention maps and keys, or a
ResNet's dense grid (which has no attention: only the normalized cut runs on it)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from apps.segmentation.defaults import DEFAULT_BATCH_SIZE
from apps.segmentation.masks import attention_transform, cls_attention_maps
from apps.segmentation.ncut import key_features
from dino.features import FeatureExtractor
from dino.models.backbone import is_resnet
from dino.runtime import Runtime

if TYPE_CHECKING:
    from dino.models.backbone import Backbone

__all__ = [
    "ATTENTION_RUNTIME",
    "EVALUATION_RUNTIME",
    "ImageAttention",
    "ImageGrid",
    "check_has_attention",
    "iter_attention",
    "iter_grids",
    "no_attention_message",
]

# The defaults of `dino attention` and `dino seg-eval`; seg-eval reports the paper's numbers, in the reference's fp32.
ATTENTION_RUNTIME = Runtime(batch_size=DEFAULT_BATCH_SIZE)
EVALUATION_RUNTIME = Runtime(dtype="fp32", batch_size=DEFAULT_BATCH_SIZE)


@dataclass
class ImageAttention:
    """The last layer's view of one image.

    Attributes:
        index: Position of the image in the input list.
        image: The preprocessed (normalised, cropped) image, (3, H, W), H and W multiples of the patch size.
        maps: [CLS] attention to the patches per head, (heads, h, w).
        keys: Last-layer keys, (heads, 1+h·w, head_dim), [CLS] first (for the normalized cut).
    """

    index: int
    image: Tensor
    maps: Tensor
    keys: Tensor

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h, w)."""
        return tuple(self.maps.shape[-2:])  # type: ignore[return-value]

    def cut_features(self) -> Tensor:
        """The nodes' features of the normalized cut: the keys of all heads, (h·w, heads·head_dim)."""
        return key_features(self.keys)


@dataclass
class ImageGrid:
    """A ResNet's view of one image: its dense grid, the only input of the normalized cut it has.

    Attributes:
        index: Position of the image in the input list.
        image: The preprocessed image, (3, H, W), H and W multiples of the grid's stride.
        features: The ``grid_layer`` grid, (h, w, C), channels last.
    """

    index: int
    image: Tensor
    features: Tensor

    @property
    def grid(self) -> tuple[int, int]:
        """Grid (h, w)."""
        return tuple(self.features.shape[:2])  # type: ignore[return-value]

    def cut_features(self) -> Tensor:
        """The nodes' features of the normalized cut: the grid's, (h·w, C)."""
        return self.features.reshape(-1, self.features.shape[-1])


def no_attention_message(model: Backbone, instead: str) -> str:
    """Why `model` (a ResNet) gives no attention maps, and `instead`, what to run for masks from its dense grid."""
    name = f"ResNet-{model.depth}" if hasattr(model, "depth") else type(model).__name__
    return f"{name} has no self-attention, so it has no [CLS] attention maps (nor their diffusion); {instead}"


def check_has_attention(
    model: Backbone,
    instead: str = "use the normalized cut of its dense grid (dino attention --ncut, dino seg-eval --method ncut)",
) -> None:
    """Refuse a backbone without self-attention (a ResNet) before any image is read.

    Raises:
        ValueError: :func:`no_attention_message` with `instead`.
    """
    if is_resnet(model):
        raise ValueError(no_attention_message(model, instead))


def iter_attention(
    model: Backbone,
    images: Sequence[str | os.PathLike[str] | Image.Image],
    size: int = 480,
    keep_aspect: bool = False,
    runtime: Runtime | None = None,
) -> Iterator[ImageAttention]:
    """Attention maps and keys of each image, from one forward pass per image, batched over same-size images.

    Args:
        model: The backbone.
        images: Paths or PIL images.
        size: Square side (reference: 480), or the short side with `keep_aspect`.
        keep_aspect: Resize the short side instead of forcing a square.
        runtime: How the backbone runs (:data:`ATTENTION_RUNTIME` when None); its progress bar counts each image
            once the caller is done with it.

    Yields:
        One :class:`ImageAttention` per image, grouped by batch (use ``.index`` for the input position).

    Raises:
        ValueError: `model` has no self-attention (a ResNet; see :func:`iter_grids`).
    """
    check_has_attention(model)
    transform = attention_transform(model.patch_size, size, keep_aspect)
    runtime = runtime or ATTENTION_RUNTIME
    extractor = FeatureExtractor(model, transform, replace(runtime, progress=False))
    with tqdm(total=len(images), desc="attention", unit="img", disable=not runtime.progress) as bar:
        for tensors, indices in extractor.iter_images(images):
            batch = extractor.forward(tensors, attention=True, attention_rows="cls")
            assert batch.attention is not None and batch.keys is not None
            maps = cls_attention_maps(batch.attention, model.grid_size(tensors.shape[-2], tensors.shape[-1]))
            for row, index in enumerate(indices):
                yield ImageAttention(index, tensors[row], maps[row], batch.keys[row])
                bar.update(1)


def iter_grids(
    model: Backbone,
    images: Sequence[str | os.PathLike[str] | Image.Image],
    size: int = 480,
    keep_aspect: bool = False,
    runtime: Runtime | None = None,
) -> Iterator[ImageGrid]:
    """The dense grid of each image (a ResNet's ``grid_layer`` grid, or a ViT's patch tokens), one forward pass per
    image, batched over same-size images; the preprocessing and arguments are :func:`iter_attention`'s, the grid's
    stride (``model.patch_size``) standing for the patch size."""
    transform = attention_transform(model.patch_size, size, keep_aspect)
    runtime = runtime or ATTENTION_RUNTIME
    extractor = FeatureExtractor(model, transform, replace(runtime, progress=False))
    with tqdm(total=len(images), desc="features", unit="img", disable=not runtime.progress) as bar:
        for tensors, indices in extractor.iter_images(images):
            batch = extractor.forward(tensors, patch_tokens=True)
            assert batch.patch_tokens is not None
            for row, index in enumerate(indices):
                yield ImageGrid(index, tensors[row], batch.patch_tokens[row])
                bar.update(1)
