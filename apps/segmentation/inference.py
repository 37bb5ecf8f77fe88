"""One batched forward pass per image giving everything the masks need: [CLS] attention maps and keys."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from apps.segmentation.defaults import DEFAULT_BATCH_SIZE
from apps.segmentation.masks import attention_transform, cls_attention_maps
from dino.features import FeatureExtractor
from dino.models.vision_transformer import VisionTransformer
from dino.runtime import Runtime

__all__ = ["ATTENTION_RUNTIME", "EVALUATION_RUNTIME", "ImageAttention", "iter_attention"]

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


def iter_attention(
    model: VisionTransformer,
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
    """
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
