"""Score foreground, attention or normalized-cut masks against ground truth with the paper's Jaccard (SPEC §10).

Masks are compared with the ground truth at the photo's own size by default (``resolution="photo"``); the
paper's protocol compares them at the network input's size (labels resized like the image and cropped to whole
patches: ``resolution="input"``, with ``keep_aspect=False`` for its square 480×480 input).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from apps.segmentation.defaults import DEFAULT_THRESHOLD, MASK_METHODS, NCUT_EPS, NCUT_TAU, REFERENCE_IMAGE_SIZE
from apps.segmentation.diffusion import DiffusionSettings, diffusion_foreground, grid_to_photo, resized_size
from apps.segmentation.inference import (
    EVALUATION_RUNTIME,
    ImageAttention,
    ImageGrid,
    check_has_attention,
    iter_attention,
    iter_grids,
)
from apps.segmentation.jaccard import ImageJaccard, VoidMode, best_mask_jaccard
from apps.segmentation.masks import (
    HeadMerge,
    merge_heads,
    threshold_attention,
    upsample_nearest,
)
from apps.segmentation.ncut import ncut_foreground_features
from apps.segmentation.voc import SegmentationSample, read_labels
from dino.atomic import atomic_write, atomic_write_json
from dino.checkpoint import weights_record
from dino.data.io import open_image
from dino.data.transforms import denormalize
from dino.models.backbone import is_resnet
from dino.runtime import Runtime

if TYPE_CHECKING:
    from dino.models.backbone import Backbone

__all__ = [
    "EvaluationResult",
    "MASK_METHODS",
    "MaskMethod",
    "Resolution",
    "evaluate_masks",
    "predict_masks",
    "write_results",
]

MaskMethod = Literal["diffusion", "attention", "ncut"]
Resolution = Literal["photo", "input"]
CSV_FIELDS = ("name", "jaccard", "objects", "object_ids", "object_jaccards", "best_masks")


def predict_masks(
    item: ImageAttention | ImageGrid,
    patch_size: int,
    method: MaskMethod = "diffusion",
    heads: HeadMerge = "best",
    threshold: float = DEFAULT_THRESHOLD,
    tau: float = NCUT_TAU,
    eps: float = NCUT_EPS,
    photo: Image.Image | None = None,
    resized: tuple[int, int] | None = None,
    diffusion: DiffusionSettings = DiffusionSettings(),
) -> np.ndarray:
    """Candidate masks of one image, (K, H, W) boolean: at the photo's size when `photo` is given (with the size
    `resized` it was resized to before the crop, :func:`apps.segmentation.diffusion.resized_size`), else at the
    network input's.

    ``diffusion`` gives one foreground mask (:mod:`apps.segmentation.diffusion`); ``attention`` the per-head
    masks (K = heads) for ``heads="best"`` and one mask otherwise (see
    :func:`apps.segmentation.masks.merge_heads`); ``ncut`` one foreground mask (TokenCut), the only one of an
    :class:`~apps.segmentation.inference.ImageGrid` (a ResNet's grid, which has no attention).
    """
    if photo is not None and resized is None:
        raise ValueError("predict_masks needs the resized size of the photo it is given")
    if isinstance(item, ImageGrid) and method != "ncut":
        raise ValueError(f"method {method!r} needs [CLS] attention, which a dense grid has not; use method 'ncut'")
    if method == "diffusion":
        if photo is None:  # the network input is its own photo, already cropped to whole patches
            pixels = denormalize(item.image).permute(1, 2, 0).clamp(0, 1).numpy()
            photo, resized = Image.fromarray((pixels * 255).astype(np.uint8)), tuple(item.image.shape[-2:])
        return diffusion_foreground(item.maps, item.keys, photo, patch_size, resized, diffusion)[None]  # type: ignore[arg-type]
    if method == "attention":
        grids = merge_heads(item.maps, threshold_attention(item.maps, threshold), heads, threshold)
    elif method == "ncut":
        grids = torch.from_numpy(ncut_foreground_features(item.cut_features(), item.grid, tau, eps))[None]
    else:
        raise ValueError(f"unknown mask method {method!r}; choose one of {MASK_METHODS}")
    if photo is None:
        return upsample_nearest(grids, patch_size).numpy()
    photo_size = (photo.height, photo.width)
    return np.stack(
        [grid_to_photo(g.float().numpy(), patch_size, resized, photo_size, smooth=False) > 0.5 for g in grids]
    )


def labels_at_input_resolution(labels: np.ndarray, size: int, keep_aspect: bool, shape: tuple[int, int]) -> np.ndarray:
    """Resize a label map like the image (square or short side, nearest so ids stay ids) and crop it to the
    network input's (H, W), bottom/right, as the image was cropped."""
    resize = T.Resize(size if keep_aspect else (size, size), interpolation=InterpolationMode.NEAREST)
    resized = np.array(resize(Image.fromarray(labels)))
    return resized[: shape[0], : shape[1]]


@dataclass
class EvaluationResult:
    """The dataset score, the protocol that produced it, and one row per image."""

    jaccard: float
    images: int
    objects: int
    protocol: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready score with the protocol beside it."""
        return {"jaccard": self.jaccard, "images": self.images, "objects": self.objects, "protocol": self.protocol}


def evaluate_masks(
    model: Backbone,
    samples: Sequence[SegmentationSample],
    method: MaskMethod = "diffusion",
    heads: HeadMerge = "best",
    threshold: float = DEFAULT_THRESHOLD,
    size: int = REFERENCE_IMAGE_SIZE,
    keep_aspect: bool = True,
    resolution: Resolution = "photo",
    void: VoidMode = "count",
    tau: float = NCUT_TAU,
    eps: float = NCUT_EPS,
    runtime: Runtime | None = None,
    protocol: dict[str, Any] | None = None,
) -> EvaluationResult:
    """The paper's Jaccard of `method`'s masks on `samples`: best candidate mask per ground-truth object, mean
    over the objects of an image, then over images (images without objects are listed but not averaged).

    ``resolution="photo"`` compares the masks, mapped back to each photo's own size, with the labels as they
    are; ``"input"`` (the paper's) compares at the network input's resolution: labels resized like the image
    (nearest) and cropped to a multiple of the patch size. `runtime` is how the backbone runs (the reference's fp32,
    :data:`apps.segmentation.inference.EVALUATION_RUNTIME`, when None). `protocol` adds entries (dataset, split…) to
    the record. A ResNet, which has no self-attention, scores ``ncut`` masks of its ``grid_layer`` grid only.

    Raises:
        ValueError: `method` needs attention and `model` is a ResNet (one line naming ``ncut``).
    """
    if not samples:
        raise ValueError("no images to evaluate")
    if method != "ncut":
        check_has_attention(model, f"--method {method} needs them: use --method ncut, the normalized cut of its grid")
    if resolution not in ("photo", "input"):
        raise ValueError(f"resolution must be 'photo' or 'input', got {resolution!r}")
    rows: list[dict[str, Any]] = [{}] * len(samples)
    images = [s.image for s in samples]
    forward = iter_grids if is_resnet(model) else iter_attention
    for item in forward(model, images, size, keep_aspect, runtime or EVALUATION_RUNTIME):
        sample = samples[item.index]
        masks, labels = _masks_and_labels(
            item, sample, model.patch_size, method, heads, threshold, tau, eps, size, keep_aspect, resolution
        )
        rows[item.index] = _image_row(sample, best_mask_jaccard(masks, labels, void), method, heads)
    scored = [row["jaccard"] for row in rows if not math.isnan(row["jaccard"])]
    record = _protocol_record(model, method, heads, threshold, size, keep_aspect, resolution, void, tau, eps, protocol)
    return EvaluationResult(
        jaccard=float(np.mean(scored)) if scored else float("nan"),
        images=len(scored),
        objects=sum(row["objects"] for row in rows),
        protocol=record,
        rows=rows,
    )


def _masks_and_labels(
    item: ImageAttention | ImageGrid,
    sample: SegmentationSample,
    patch_size: int,
    method: MaskMethod,
    heads: HeadMerge,
    threshold: float,
    tau: float,
    eps: float,
    size: int,
    keep_aspect: bool,
    resolution: Resolution,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's candidate masks (K, H, W) and its labels (H, W), both at the resolution they are compared at."""
    if resolution == "photo":
        photo = open_image(sample.image)
        resized = resized_size((photo.height, photo.width), size, keep_aspect)
        masks = predict_masks(item, patch_size, method, heads, threshold, tau, eps, photo, resized)
        labels = read_labels(sample)
        if labels.shape != masks.shape[1:]:
            raise ValueError(
                f"{sample.annotation}: labels are {labels.shape[::-1]} (w, h), the photo {masks.shape[:0:-1]}"
            )
        return masks, labels
    masks = predict_masks(item, patch_size, method, heads, threshold, tau, eps)
    return masks, labels_at_input_resolution(read_labels(sample), size, keep_aspect, masks.shape[1:])


def _image_row(sample: SegmentationSample, score: ImageJaccard, method: MaskMethod, heads: HeadMerge) -> dict[str, Any]:
    """One image's ``per_image.csv`` row (:data:`CSV_FIELDS`); best_masks names the winning heads only when each
    head's mask was a candidate."""
    return {
        "name": sample.name,
        "jaccard": score.mean,
        "objects": len(score.object_ids),
        "object_ids": " ".join(map(str, score.object_ids)),
        "object_jaccards": " ".join(f"{v:.6f}" for v in score.per_object),
        "best_masks": " ".join(map(str, score.best_mask)) if method == "attention" and heads == "best" else "",
    }


def _protocol_record(
    model: Backbone,
    method: MaskMethod,
    heads: HeadMerge,
    threshold: float,
    size: int,
    keep_aspect: bool,
    resolution: Resolution,
    void: VoidMode,
    tau: float,
    eps: float,
    protocol: dict[str, Any] | None,
) -> dict[str, Any]:
    """What produced a score, for ``results.json``: the caller's `protocol` entries, the settings of the chosen
    method only (the others None), preprocessing, comparison and the backbone."""
    return {
        **(protocol or {}),
        "method": method,
        "diffusion": DiffusionSettings().as_dict() if method == "diffusion" else None,
        "heads": heads if method == "attention" else None,
        "threshold": threshold if method == "attention" else None,
        "ncut_tau": tau if method == "ncut" else None,
        "ncut_eps": eps if method == "ncut" else None,
        "size": size,
        "resize": "short-side" if keep_aspect else "square",
        "void": void,
        "aggregation": "best mask per object, mean over objects, then over images",
        "resolution": "photo (masks mapped back to each photo's size)"
        if resolution == "photo"
        else "network input (labels resized nearest, cropped to a multiple of the patch size)",
        **weights_record(model),
        "patch_size": model.patch_size,
        "embed_dim": model.embed_dim,
        **_backbone_record(model),
    }


def _backbone_record(model: Backbone) -> dict[str, Any]:
    """A ViT's head count; a ResNet's architecture and the grid its masks were cut on (``patch_size`` is then the
    grid's stride)."""
    if not is_resnet(model):
        return {"num_heads": model.num_heads}
    return {
        "arch": model.arch,
        "grid_layer": model.grid_layer,
        "grid_stride": model.patch_size,
        "grid_dim": model.grid_dim,
    }


def write_results(result: EvaluationResult, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``results.json`` (score + protocol) and ``per_image.csv`` into `out_dir`, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path, rows_path = out_dir / "results.json", out_dir / "per_image.csv"
    atomic_write_json(summary_path, result.summary())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(result.rows)
    with atomic_write(rows_path, "w") as handle:
        handle.write(buffer.getvalue())
    return summary_path, rows_path
