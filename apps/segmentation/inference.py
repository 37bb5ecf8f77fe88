"""One batched forward pass per image giving everything the masks need: [CLS] attention maps and keys."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from apps.segmentation.masks import attention_transform, cls_attention_maps
from dino.features import BatchFeatures, DTypeName, FeatureExtractor
from dino.models.vision_transformer import VisionTransformer

__all__ = ["ImageAttention", "iter_attention"]


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


@dataclass
class _AttentionBatch(BatchFeatures):
    images: Tensor | None = None
    keys: Tensor | None = None


class _AttentionExtractor(FeatureExtractor):
    """A FeatureExtractor whose forward also returns the keys and the input images."""

    @torch.inference_mode()
    def forward(self, images: Tensor, patch_tokens: bool = False, attention: bool = True) -> _AttentionBatch:
        device_images = images.to(self.device, non_blocking=True)
        context = self.autocast()
        with context:
            out = self.model.forward_with_attention(device_images)
        return _AttentionBatch(
            indices=[],
            cls=out.tokens[:, 0].float().cpu(),
            attention=out.attention.float().cpu(),
            images=images.cpu(),
            keys=out.keys.float().cpu(),
        )


def iter_attention(
    model: VisionTransformer,
    images: Sequence[str | os.PathLike[str] | Image.Image],
    size: int = 480,
    keep_aspect: bool = False,
    device: str = "auto",
    dtype: DTypeName = "auto",
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
) -> Iterator[ImageAttention]:
    """Attention maps and keys of each image, from one forward pass per image, batched over same-size images.

    Args:
        model: The backbone.
        images: Paths or PIL images.
        size: Square side (reference: 480), or the short side with `keep_aspect`.
        keep_aspect: Resize the short side instead of forcing a square.
        device, dtype, batch_size, num_workers, progress: See :class:`dino.features.FeatureExtractor`.

    Yields:
        One :class:`ImageAttention` per image, grouped by batch (use ``.index`` for the input position).
    """
    transform = attention_transform(model.patch_size, size, keep_aspect)
    extractor = _AttentionExtractor(model, transform, device, dtype, batch_size, num_workers, progress)
    for batch in extractor.iter_batches(images, attention=True):
        assert batch.images is not None and batch.keys is not None and batch.attention is not None
        grid = model.grid_size(batch.images.shape[-2], batch.images.shape[-1])
        maps = cls_attention_maps(batch.attention, grid)
        for row, index in enumerate(batch.indices):
            yield ImageAttention(index, batch.images[row], maps[row], batch.keys[row])
