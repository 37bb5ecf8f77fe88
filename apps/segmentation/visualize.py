"""`dino attention`: the reference's attention figures and masks for any images (SPEC §10)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from apps.segmentation.figures import (
    MEAN_CMAP,
    head_colors,
    save_heatmap,
    save_image,
    save_mask_overlay,
    save_summary,
)
from apps.segmentation.inference import iter_attention
from apps.segmentation.masks import (
    DEFAULT_THRESHOLD,
    REFERENCE_IMAGE_SIZE,
    mean_attention,
    threshold_attention,
    upsample_nearest,
)
from apps.segmentation.ncut import ncut_foreground
from dino.data.io import list_images
from dino.data.masks import write_indexed_png
from dino.data.transforms import denormalize
from dino.features import DTypeName
from dino.models.vision_transformer import VisionTransformer

__all__ = ["output_folders", "save_attention_figures"]


def output_folders(paths: Sequence[Path], out: Path) -> list[Path]:
    """One output folder per image, named after its stem; repeated stems get ``-1``, ``-2``… suffixes."""
    folders, used = [], set()
    for path in paths:
        name, suffix = path.stem, 0
        while name in used:
            suffix += 1
            name = f"{path.stem}-{suffix}"
        used.add(name)
        folders.append(out / name)
    return folders


def save_attention_figures(
    model: VisionTransformer,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    size: int = REFERENCE_IMAGE_SIZE,
    keep_aspect: bool = False,
    ncut: bool = True,
    device: str = "auto",
    dtype: DTypeName = "auto",
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write, for each image, into ``out/<image stem>/``:

    ``img.png`` (the network input), ``attn-head{j}.png`` (per-head heatmaps), ``attn-mean.png`` (mean over
    heads, inferno), ``mask_th{t}_head{j}.png`` (each head's mask, overlay and contour),
    ``mask_th{t}_heads.png`` (all heads in distinct colours), with `ncut` ``ncut-mask.png`` (indexed PNG,
    1 = foreground), and ``summary.png`` (everything in one figure).

    Args:
        model: The backbone.
        inputs: Image files or folders (searched recursively).
        out: Output folder.
        threshold: Fraction of each head's attention mass the masks keep.
        size: Square side (reference: 480), or the short side with `keep_aspect`.
        keep_aspect: Resize the short side to `size` instead of forcing a square.
        ncut: Also compute the normalized-cut foreground from the same forward pass.
        device, dtype, batch_size, num_workers, progress: See :class:`dino.features.FeatureExtractor`.

    Returns:
        The per-image output folders, in input order.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    paths = list_images(inputs, required=True)
    folders = output_folders(paths, Path(out))
    patch = model.patch_size
    tag = f"th{threshold:g}"
    colors = head_colors(model.num_heads)
    for item in iter_attention(model, paths, size, keep_aspect, device, dtype, batch_size, num_workers, progress):
        folder = folders[item.index]
        folder.mkdir(parents=True, exist_ok=True)
        image = denormalize(item.image).permute(1, 2, 0).numpy()
        head_maps = upsample_nearest(item.maps, patch).numpy()
        head_masks = upsample_nearest(threshold_attention(item.maps, threshold), patch).numpy()
        mean_map = upsample_nearest(mean_attention(item.maps), patch).numpy()
        save_image(folder / "img.png", image)
        save_heatmap(folder / "attn-mean.png", mean_map, cmap=MEAN_CMAP)
        for head in range(head_maps.shape[0]):
            save_heatmap(folder / f"attn-head{head}.png", head_maps[head])
            save_mask_overlay(folder / f"mask_{tag}_head{head}.png", image, head_masks[head : head + 1], colors[[head]])
        save_mask_overlay(folder / f"mask_{tag}_heads.png", image, head_masks, colors)
        foreground = None
        if ncut:
            grid_mask = torch.from_numpy(ncut_foreground(item.keys, item.grid))
            foreground = upsample_nearest(grid_mask, patch).numpy()
            write_indexed_png(folder / "ncut-mask.png", foreground.astype(np.uint8))
        title = f"{paths[item.index].name} — {getattr(model, 'weights_source', '')}, {tag}"
        save_summary(folder / "summary.png", image, head_maps, head_masks, mean_map, threshold, foreground, title)
    return folders
