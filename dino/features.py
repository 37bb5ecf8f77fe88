"""Frozen-feature extraction: a backbone plus a protocol's preprocessing, batched over many images."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dino.atomic import atomic_output_path, atomic_write_json, refuse_overwriting_inputs
from dino.checkpoint import weights_record
from dino.data.constants import DEFAULT_MAX_TOKENS
from dino.data.io import ImageLoadError, list_images, open_image, to_rgb
from dino.data.transforms import ImageTransform, knn_transform, make_transform, planned_size
from dino.models.backbone import Backbone, is_resnet
from dino.models.vision_transformer import AttentionRows
from dino.runtime import Runtime, autocast_context

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "BatchFeatures",
    "FeatureExtractor",
    "FeatureFile",
    "Features",
    "NonFiniteOutputError",
    "NothingUsableError",
    "SkippedImage",
    "TokenBudgetError",
    "check_token_budget",
    "extract_features_to_file",
    "image_name",
    "require_finite",
]

OnError = Literal["raise", "skip"]


class TokenBudgetError(ImageLoadError):
    """An image whose preprocessed size would make more patch tokens than allowed; the message names it."""


# How a backbone's grid covers an image: a ViT's patches drop a partial patch at the border (floor), a ResNet's
# padded stride-2 convolutions keep it (ceil, see ResNetBackbone.grid_size).
GridKind = Literal["patches", "conv"]


class NothingUsableError(ValueError):
    """Every image of a list was skipped (``on_error="skip"``); the message gives the first one's reason."""


class NonFiniteOutputError(ValueError):
    """The backbone produced NaN or infinite values (finite weights overflowing in low precision, usually)."""


@dataclass(frozen=True)
class SkippedImage:
    """An input left out by ``on_error="skip"``: its position, its name (path, or "image i of n") and why."""

    index: int
    name: str
    reason: str


def check_token_budget(
    name: str,
    source_size: tuple[int, int],
    input_size: tuple[int, int],
    patch_size: int,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    grid: GridKind = "patches",
) -> None:
    """Refuse an input whose network input would hold more than `max_tokens` patch tokens (grid cells of a ResNet).

    Args:
        name: What the message calls the input (its path).
        source_size: The image's (width, height) in pixels.
        input_size: The preprocessed (height, width).
        patch_size: The backbone's patch size (a ResNet's grid stride).
        max_tokens: The budget; None for no limit.
        grid: ``patches`` (a ViT: whole patches) or ``conv`` (a ResNet: partial cells count).

    Raises:
        TokenBudgetError: Naming the input, both sizes, the token count and the way out.
    """
    height, width = input_size
    if grid == "conv":
        tokens, unit = -(-height // patch_size) * -(-width // patch_size), "grid cells"
    else:
        tokens, unit = (height // patch_size) * (width // patch_size), "patch tokens"
    if max_tokens is not None and tokens > max_tokens:
        raise TokenBudgetError(
            f"{name}: {source_size[0]}×{source_size[1]} pixels become {width}×{height} after preprocessing, "
            f"{tokens:,} {unit} of {patch_size} pixels, more than the limit of {max_tokens:,}; use a smaller "
            "size or a square resize, or raise the limit (--max-tokens)"
        )


def require_finite(values: Tensor, what: str, dtype: torch.dtype | None = None) -> Tensor:
    """`values` unchanged if every entry is finite.

    Raises:
        NonFiniteOutputError: Saying what held NaN/Inf and, under autocast, that fp32 may avoid the overflow.
    """
    if not bool(torch.isfinite(values).all()):
        precision = f"under {str(dtype).removeprefix('torch.')} autocast" if dtype is not None else "in fp32"
        hint = "; try --dtype fp32" if dtype is not None else "; the weights or the input may be damaged"
        raise NonFiniteOutputError(f"the backbone's {what} hold NaN or infinite values {precision}{hint}")
    return values


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
    per-image tensors otherwise. Rows are the images at `indices` (all of them, unless some were skipped).
    """

    cls: Tensor
    patch_tokens: Tensor | list[Tensor] | None = None
    attention: Tensor | list[Tensor] | None = None
    indices: list[int] = field(default_factory=list)


ImageInput = str | os.PathLike[str] | Image.Image


def image_name(images: Sequence[ImageInput], index: int) -> str:
    """What messages call input `index`: its path, or "the image" / "image i of n" for an in-memory image."""
    image = images[index]
    if isinstance(image, Image.Image):
        return "the image" if len(images) == 1 else f"image {index + 1} of {len(images)}"
    return os.fspath(image)


class _ImageList(Dataset):
    """Preprocessed images; an image that cannot be used comes back as the error that says why.

    Returning the error instead of raising it keeps DataLoader workers from wrapping it in their own traceback:
    the main process raises it (or skips the image) with the one-line message that names the file.
    """

    def __init__(
        self,
        images: Sequence[ImageInput],
        transform: ImageTransform,
        min_side: int,
        patch_size: int,
        max_tokens: int | None,
        grid: GridKind = "patches",
    ) -> None:
        self.images = images
        self.transform = transform
        self.min_side = min_side
        self.patch_size = patch_size
        self.max_tokens = max_tokens
        self.grid = grid

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor | ImageLoadError | FileNotFoundError, int]:
        name = image_name(self.images, index)
        try:
            return self._preprocess(self.images[index], name), index
        except (ImageLoadError, FileNotFoundError) as error:
            return error, index

    def _preprocess(self, image: ImageInput, name: str) -> Tensor:
        image = to_rgb(image) if isinstance(image, Image.Image) else open_image(image)
        source = (image.width, image.height)
        # Checked before resizing too: a long strip's resize alone can need gigabytes.
        planned = planned_size(self.transform, *source)
        if planned is not None:
            check_token_budget(name, source, planned, self.patch_size, self.max_tokens, self.grid)
        tensor = self.transform(image)
        height, width = tensor.shape[-2:]
        check_token_budget(name, source, (height, width), self.patch_size, self.max_tokens, self.grid)
        if min(height, width) < self.min_side:
            raise ImageLoadError(
                f"{name}: too small, {image.width}×{image.height} pixels ({width}×{height} after preprocessing); the "
                f"backbone needs at least {self.min_side} on each side"
            )
        return tensor


def _collate(items: list[tuple[Tensor | Exception, int]]) -> list[tuple[Tensor | Exception, int]]:
    return items


class FeatureExtractor:
    """Runs a frozen backbone over images with the protocol's preprocessing.

    With a ResNet (:class:`~dino.models.resnet.ResNetBackbone`) `cls` is the average-pooled feature (the
    embedding DINO evaluates a ResNet on, SPEC §24) and the patch tokens are its dense grid (layer4, or layer3 when
    ``model.grid_layer`` says so) in the same (B, h, w, C) layout; it has no attention to return.

    Args:
        model: The backbone (see :func:`dino.checkpoint.load_backbone`): a ViT or a ResNet.
        transform: PIL image -> normalised tensor; the k-NN protocol (resize 256, crop 224) by default.
        runtime: Device, precision, batch size, decoding workers, progress bar (counting images) and token budget
            (a preprocessed image over ``runtime.max_tokens`` patch tokens is refused with a
            :class:`TokenBudgetError` before it is resized); ``Runtime()`` when None.
        min_side: Smallest preprocessed side accepted (a smaller image raises an error that names it); one
            patch (a ResNet: one grid stride) by default.
        on_error: What an unusable image does (unreadable, too small, over the token budget): ``raise`` its
            one-line error, or ``skip`` it, recording it in :attr:`skipped`.

    Attributes:
        runtime: The runtime it was built with.
        device: The device the model runs on (``runtime.device`` resolved).
        autocast_dtype: The autocast dtype on that device, None for plain fp32 (``runtime.dtype`` resolved once).
        skipped: The images the last pass over a list left out (``on_error="skip"``), in input order.
    """

    def __init__(
        self,
        model: Backbone,
        transform: ImageTransform | None = None,
        runtime: Runtime | None = None,
        *,
        min_side: int | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.runtime = runtime or Runtime()
        self.device = self.runtime.torch_device()
        self.model = model.eval().to(self.device)
        self.transform = transform or knn_transform()
        self.autocast_dtype = self.runtime.autocast_dtype(self.device)
        self.min_side = min_side or model.patch_size
        self.on_error = on_error
        self.skipped: list[SkippedImage] = []

    @torch.inference_mode()
    def forward(
        self, images: Tensor, patch_tokens: bool = False, attention: bool = False, attention_rows: AttentionRows = "all"
    ) -> BatchFeatures:
        """Features of a batch of preprocessed images (B, 3, H, W), with a single backbone pass; with `attention`,
        every row of the last block's attention or (``attention_rows="cls"``) the [CLS] query's only."""
        if attention:
            self.refuse_attention()
        images = images.to(self.device, non_blocking=True)
        if is_resnet(self.model):
            with self.autocast():
                pooled, grid = self.model.forward_dense(images)
            pooled = require_finite(pooled.float().cpu(), "features", self.autocast_dtype)
            dense = require_finite(grid.float().cpu(), "features", self.autocast_dtype) if patch_tokens else None
            return BatchFeatures(indices=[], cls=pooled.contiguous(), patch_tokens=dense)
        with self.autocast():
            if attention:
                out = self.model.forward_with_attention(images, rows=attention_rows)
                tokens, attn, keys = out.tokens, out.attention.float().cpu(), out.keys.float().cpu()
            else:
                tokens, attn, keys = self.model.forward_features(images), None, None
        tokens = require_finite(tokens.float().cpu(), "features", self.autocast_dtype)
        grid = None
        if patch_tokens:
            height, width = self.model.grid_size(images.shape[-2], images.shape[-1])
            grid = tokens[:, 1:].reshape(tokens.shape[0], height, width, -1)
        return BatchFeatures(indices=[], cls=tokens[:, 0].contiguous(), patch_tokens=grid, attention=attn, keys=keys)

    def refuse_attention(self) -> None:
        """Raise the one-line error that says a ResNet has no attention (a ViT has: then nothing happens)."""
        if is_resnet(self.model):
            raise ValueError(
                f"{self.model.arch} has no self-attention to return: attention maps need a ViT (--weights default, "
                "a DINO/DINOv2 release or ViT file); with a ResNet use its dense grid (patch tokens) instead"
            )

    def autocast(self) -> AbstractContextManager:
        """The autocast context of the chosen device and dtype (a no-op for fp32)."""
        return autocast_context(self.device, self.autocast_dtype)

    def iter_images(
        self, images: Sequence[ImageInput], desc: str = "features", progress: bool | None = None
    ) -> Iterator[tuple[Tensor, list[int]]]:
        """Preprocessed images as same-size batches (B, 3, H, W) with their positions in `images`.

        Decoding runs in ``runtime.num_workers`` processes; images of different sizes are split into same-size
        sub-batches. The progress bar (`progress`, ``runtime.progress`` by default) counts the images of
        a sub-batch once the caller has used it. With ``on_error="skip"`` unusable images are left out and
        listed in :attr:`skipped`.

        Raises:
            ImageLoadError / FileNotFoundError: An unusable image (``on_error="raise"``), naming it.
            NothingUsableError: Every image was skipped.
        """
        self.skipped = []
        loader = DataLoader(
            _ImageList(
                images,
                self.transform,
                self.min_side,
                self.model.patch_size,
                self.runtime.max_tokens,
                "conv" if is_resnet(self.model) else "patches",
            ),
            batch_size=self.runtime.batch_size,
            num_workers=self.runtime.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        show = self.runtime.progress if progress is None else progress
        with tqdm(total=len(images), desc=desc, unit="img", disable=not show) as bar:
            for items in loader:
                usable = []
                for item, index in items:
                    if isinstance(item, Tensor):
                        usable.append((item, index))
                    elif self.on_error == "raise":
                        raise item
                    else:
                        self.skipped.append(SkippedImage(index, image_name(images, index), str(item)))
                        bar.update(1)
                for shape in dict.fromkeys(tensor.shape for tensor, _ in usable):
                    group = [(tensor, index) for tensor, index in usable if tensor.shape == shape]
                    yield torch.stack([t for t, _ in group]), [index for _, index in group]
                    bar.update(len(group))
        if images and len(self.skipped) == len(images):
            raise NothingUsableError(
                f"none of the {len(images)} images could be used; the first: {self.skipped[0].reason}"
            )

    def iter_batches(
        self,
        images: Sequence[ImageInput],
        patch_tokens: bool = False,
        attention: bool = False,
    ) -> Iterator[BatchFeatures]:
        """Stream features batch by batch (memory stays bounded), in same-size sub-batches."""
        if attention:
            self.refuse_attention()  # before reading any image
        for tensors, indices in self.iter_images(images):
            batch = self.forward(tensors, patch_tokens, attention)
            batch.indices = indices
            yield batch

    def extract(
        self,
        images: Sequence[ImageInput],
        patch_tokens: bool = False,
        attention: bool = False,
    ) -> Features:
        """Features of all `images` (paths or PIL images), in input order (skipped ones left out, see
        :attr:`Features.indices`)."""
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
        kept = [index for index, vector in enumerate(cls) if vector is not None]
        return Features(
            cls=torch.stack([cls[i] for i in kept]),
            patch_tokens=_stack_if_uniform([patches[i] for i in kept]) if patch_tokens else None,
            attention=_stack_if_uniform([attns[i] for i in kept]) if attention else None,
            indices=kept,
        )


def _stack_if_uniform(tensors: list[Tensor]) -> Tensor | list[Tensor]:
    return torch.stack(tensors) if len({t.shape for t in tensors}) == 1 else tensors


class FeatureFile(NamedTuple):
    """What :func:`extract_features_to_file` wrote: the .npy path, its rows, and the images left out."""

    path: Path
    rows: int
    skipped: list[SkippedImage]


def extract_features_to_file(
    inputs: Sequence[str | Path],
    out: str | Path,
    model: Backbone,
    what: str = "cls",
    preprocessing: str = "knn",
    size: int | None = None,
    on_error: str = "skip",
    runtime: Runtime | None = None,
) -> FeatureFile:
    """Extract [CLS] features (N, D) or patch-token grids (N, h, w, D) of images and save them as .npy.

    A JSON sidecar (same name, ``.json``) lists the image paths in row order, the recipe, and the images left
    out (``skipped``: path and reason). Both files are written atomically.

    Args:
        on_error: ``skip`` leaves unusable images out (and lists them); ``fail`` (or ``raise``) stops at the
            first with its error, writing nothing.
        runtime: How the backbone runs (:class:`dino.runtime.Runtime`); ``Runtime()`` when None.

    Returns:
        The .npy path, its row count and the skipped images.
    """
    if Path(out).suffix.lower() != ".npy":
        raise ValueError(
            f"{out}: the features are written as .npy and the image list as .json beside them; give a .npy path"
        )
    transform = make_transform(preprocessing, size, model.patch_size)
    paths = list_images(inputs, required=True)
    refuse_overwriting_inputs(out, paths)
    refuse_overwriting_inputs(Path(out).with_suffix(".json"), paths)
    extractor = FeatureExtractor(model, transform, runtime, on_error="skip" if on_error == "skip" else "raise")
    features = extractor.extract(paths, patch_tokens=what == "patch")
    array = features.cls if what == "cls" else features.patch_tokens
    if isinstance(array, list):
        raise ValueError(
            "patch tokens of images of different sizes cannot share one array; use --preprocess square or knn"
        )
    out = Path(out)
    with atomic_output_path(out) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, array.numpy().astype(np.float32))
    atomic_write_json(
        out.with_suffix(".json"),
        {
            "features": what,
            "shape": list(array.shape),
            **weights_record(model),
            "patch_size": model.patch_size,
            "embed_dim": model.embed_dim,
            "preprocessing": preprocessing,
            "size": size,
            "images": [str(paths[i]) for i in features.indices],
            "skipped": [{"path": image.name, "reason": image.reason} for image in extractor.skipped],
        },
    )
    return FeatureFile(out, len(features.indices), extractor.skipped)
