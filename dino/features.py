"""Frozen-feature extraction: a backbone plus a protocol's preprocessing, batched over many images."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dino.data.io import ImageLoadError, open_image, to_rgb
from dino.data.transforms import ImageTransform, knn_transform
from dino.models.vision_transformer import VisionTransformer

__all__ = [
    "TORCH_DTYPES",
    "BatchFeatures",
    "FeatureExtractor",
    "Features",
    "autocast_context",
    "autocast_dtype",
    "pick_device",
    "torch_dtype",
]

DTypeName = Literal["auto", "fp32", "bf16", "fp16"]
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``fp32``, ``bf16`` or ``fp16``."""
    if name not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; any other value is a ``torch.device`` string.

    Raises:
        ValueError: `preference` is not a device name, or names a device this machine does not have.
    """
    if preference != "auto":
        try:
            device = torch.device(preference)
        except RuntimeError:
            raise ValueError(f"device {preference!r}: not a device name (auto, cpu, cuda, cuda:1, mps …)") from None
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
            raise ValueError(f"device {preference!r}: this machine has {found}; use --device auto or cpu")
        mps = getattr(torch.backends, "mps", None)
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError(f"device {preference!r}: Apple MPS is not available here; use --device auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` on `device` with `dtype`, or a no-op context for None (plain fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def autocast_dtype(device: torch.device, dtype: DTypeName = "auto") -> torch.dtype | None:
    """The autocast dtype to use, or None for plain fp32: ``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    return None if dtype == "fp32" else TORCH_DTYPES[dtype]


@dataclass
class BatchFeatures:
    """Features of one batch of same-size images (float32, on the CPU).

    Attributes:
        indices: Positions of these images in the extractor's input list.
        cls: [CLS] after the final norm, (B, D).
        patch_tokens: Last-block patch tokens after the final norm as grids, (B, h, w, D), if requested.
        attention: Last-block attention, (B, heads, 1+h·w, 1+h·w), if requested.
        keys: Last-block keys, (B, heads, 1+h·w, head_dim), whenever attention is requested (same pass).
    """

    indices: list[int]
    cls: Tensor
    patch_tokens: Tensor | None = None
    attention: Tensor | None = None
    keys: Tensor | None = None


@dataclass
class Features:
    """Features of a whole list of images, in input order.

    `patch_tokens` and `attention` are stacked tensors when every image had the same size, and lists of
    per-image tensors otherwise.
    """

    cls: Tensor
    patch_tokens: Tensor | list[Tensor] | None = None
    attention: Tensor | list[Tensor] | None = None


class _ImageList(Dataset):
    """Preprocessed images; an image that cannot be used comes back as the error that says why.

    Returning the error instead of raising it keeps DataLoader workers from wrapping it in their own traceback:
    the main process raises it as the one-line message that names the file.
    """

    def __init__(
        self, images: Sequence[str | os.PathLike[str] | Image.Image], transform: ImageTransform, min_side: int
    ) -> None:
        self.images = images
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor | Exception, int]:
        image = self.images[index]
        if isinstance(image, Image.Image):
            name = "the image" if len(self.images) == 1 else f"image {index + 1} of {len(self.images)}"
            image = to_rgb(image)
        else:
            name = os.fspath(image)
            try:
                image = open_image(image)
            except (ImageLoadError, FileNotFoundError) as error:
                return error, index
        tensor = self.transform(image)
        height, width = tensor.shape[-2:]
        if min(height, width) < self.min_side:
            return ImageLoadError(
                f"{name}: too small, {image.width}×{image.height} pixels ({width}×{height} after preprocessing); the "
                f"backbone needs at least {self.min_side} on each side"
            ), index
        return tensor, index


def _collate(items: list[tuple[Tensor | Exception, int]]) -> list[tuple[Tensor | Exception, int]]:
    return items


class FeatureExtractor:
    """Runs a frozen backbone over images with the protocol's preprocessing.

    Args:
        model: The backbone (see :func:`dino.checkpoint.load_backbone`).
        transform: PIL image -> normalised tensor; the k-NN protocol (resize 256, crop 224) by default.
        device: ``auto`` (CUDA, then MPS, then CPU) or a device string.
        dtype: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers that decode and preprocess images.
        progress: Show a progress bar.
        min_side: Smallest preprocessed side accepted (a smaller image raises an error that names it); one
            patch by default.
    """

    def __init__(
        self,
        model: VisionTransformer,
        transform: ImageTransform | None = None,
        device: str = "auto",
        dtype: DTypeName = "auto",
        batch_size: int = 32,
        num_workers: int = 0,
        progress: bool = True,
        min_side: int | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.model = model.eval().to(self.device)
        self.transform = transform or knn_transform()
        self.autocast_dtype = autocast_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self.min_side = min_side or model.patch_size

    @torch.inference_mode()
    def forward(self, images: Tensor, patch_tokens: bool = False, attention: bool = False) -> BatchFeatures:
        """Features of a batch of preprocessed images (B, 3, H, W), with a single backbone pass."""
        images = images.to(self.device, non_blocking=True)
        with self.autocast():
            if attention:
                out = self.model.forward_with_attention(images)
                tokens, attn, keys = out.tokens, out.attention.float().cpu(), out.keys.float().cpu()
            else:
                tokens, attn, keys = self.model.forward_features(images), None, None
        tokens = tokens.float().cpu()
        grid = None
        if patch_tokens:
            height, width = self.model.grid_size(images.shape[-2], images.shape[-1])
            grid = tokens[:, 1:].reshape(tokens.shape[0], height, width, -1)
        return BatchFeatures(indices=[], cls=tokens[:, 0].contiguous(), patch_tokens=grid, attention=attn, keys=keys)

    def autocast(self) -> AbstractContextManager:
        """The autocast context of the chosen device and dtype (a no-op for fp32)."""
        return autocast_context(self.device, self.autocast_dtype)

    def iter_images(
        self, images: Sequence[str | os.PathLike[str] | Image.Image], desc: str = "features"
    ) -> Iterator[tuple[Tensor, list[int]]]:
        """Preprocessed images as same-size batches (B, 3, H, W) with their positions in `images`.

        Decoding runs in `num_workers` processes; images of different sizes are split into same-size
        sub-batches; the progress bar counts images.
        """
        loader = DataLoader(
            _ImageList(images, self.transform, self.min_side),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        with tqdm(total=len(images), desc=desc, unit="img", disable=not self.progress) as bar:
            for items in loader:
                for item, _ in items:
                    if isinstance(item, Exception):
                        raise item
                for shape in dict.fromkeys(tensor.shape for tensor, _ in items):
                    group = [(tensor, index) for tensor, index in items if tensor.shape == shape]
                    yield torch.stack([t for t, _ in group]), [index for _, index in group]
                bar.update(len(items))

    def iter_batches(
        self,
        images: Sequence[str | os.PathLike[str] | Image.Image],
        patch_tokens: bool = False,
        attention: bool = False,
    ) -> Iterator[BatchFeatures]:
        """Stream features batch by batch (memory stays bounded), in same-size sub-batches."""
        for tensors, indices in self.iter_images(images):
            batch = self.forward(tensors, patch_tokens, attention)
            batch.indices = indices
            yield batch

    def extract(
        self,
        images: Sequence[str | os.PathLike[str] | Image.Image],
        patch_tokens: bool = False,
        attention: bool = False,
    ) -> Features:
        """Features of all `images` (paths or PIL images), in input order."""
        if not images:
            raise ValueError("no images to extract features from")
        cls: list[Any] = [None] * len(images)
        patches: list[Any] = [None] * len(images)
        attns: list[Any] = [None] * len(images)
        for batch in self.iter_batches(images, patch_tokens, attention):
            for row, index in enumerate(batch.indices):
                cls[index] = batch.cls[row]
                if batch.patch_tokens is not None:
                    patches[index] = batch.patch_tokens[row]
                if batch.attention is not None:
                    attns[index] = batch.attention[row]
        return Features(
            cls=torch.stack(cls),
            patch_tokens=_stack_if_uniform(patches) if patch_tokens else None,
            attention=_stack_if_uniform(attns) if attention else None,
        )


def _stack_if_uniform(tensors: list[Tensor]) -> Tensor | list[Tensor]:
    return torch.stack(tensors) if len({t.shape for t in tensors}) == 1 else tensors
