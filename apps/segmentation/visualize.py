"""`dino attention`: the reference's attention figures and masks for any images (SPEC §10)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from apps.segmentation.defaults import DEFAULT_THRESHOLD, REFERENCE_IMAGE_SIZE
from apps.segmentation.diffusion import diffusion_foreground, grid_to_photo, resized_size
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
    mean_attention,
    threshold_attention,
    upsample_nearest,
)
from apps.segmentation.ncut import ncut_foreground
from dino.data.io import list_images, open_image
from dino.data.masks import write_indexed_png
from dino.data.transforms import denormalize
from dino.features import DEFAULT_MAX_TOKENS
from dino.models.vision_transformer import VisionTransformer
from dino.runtime import DTypeName

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
    foreground: bool = True,
    ncut: bool = False,
    device: str = "auto",
    dtype: DTypeName = "auto",
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
) -> list[Path]:
    """Write, for each image, into ``out/<image stem>/``:

    ``img.png`` (the network input), ``attn-head{j}.png`` (per-head heatmaps), ``attn-mean.png`` (mean over
    heads, inferno), ``mask_th{t}_head{j}.png`` (each head's mask, overlay and contour),
    ``mask_th{t}_heads.png`` (all heads in distinct colours), with `foreground` ``mask.png`` (the attention-diffusion
    foreground, :mod:`apps.segmentation.diffusion`, an indexed PNG at the photo's own size, 1 = foreground) and
    ``mask-overlay.png`` (on the photo), with `ncut` ``ncut-mask.png`` (TokenCut's mask, indexed PNG at the photo's
    size), and ``summary.png`` (everything in one figure, at the network input's size).

    Args:
        model: The backbone.
        inputs: Image files or folders (searched recursively).
        out: Output folder.
        threshold: Fraction of each head's attention mass the masks keep.
        size: Square side (reference: 480), or the short side with `keep_aspect`.
        keep_aspect: Resize the short side to `size` instead of forcing a square.
        foreground: Also compute the foreground mask from the same forward pass.
        ncut: Also compute the normalized-cut (TokenCut) mask from the same forward pass.
        device, dtype, batch_size, num_workers, progress, max_tokens: See
            :class:`dino.features.FeatureExtractor`.

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
    attention = iter_attention(
        model, paths, size, keep_aspect, device, dtype, batch_size, num_workers, progress, max_tokens
    )
    for item in attention:
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
        photo = open_image(paths[item.index]) if foreground or ncut else None
        shown = None
        if photo is not None:
            resized = resized_size((photo.height, photo.width), size, keep_aspect)
        if foreground and photo is not None:
            mask = diffusion_foreground(item.maps, item.keys, photo, patch, resized)
            write_indexed_png(folder / "mask.png", mask.astype(np.uint8))
            photo_pixels = np.asarray(photo, dtype=np.float32) / 255.0
            save_mask_overlay(folder / "mask-overlay.png", photo_pixels, mask[None], colors[:1])
            shown = _at_input_size(mask, resized, image.shape[:2])
        if ncut and photo is not None:
            grid_mask = ncut_foreground(item.keys, item.grid).astype(np.float32)
            ncut_mask = grid_to_photo(grid_mask, patch, resized, (photo.height, photo.width), smooth=False) > 0.5
            write_indexed_png(folder / "ncut-mask.png", ncut_mask.astype(np.uint8))
            shown = shown if shown is not None else _at_input_size(ncut_mask, resized, image.shape[:2])
        weights = model.provenance.source if model.provenance is not None else ""
        title = f"{paths[item.index].name} — {weights}, {tag}"
        save_summary(folder / "summary.png", image, head_maps, head_masks, mean_map, threshold, shown, title)
    return folders


def _at_input_size(mask: np.ndarray, resized: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """A photo-sized mask on the network input: resized like the photo, then cropped like it (bottom/right)."""
    small = Image.fromarray(mask.astype(np.uint8)).resize((resized[1], resized[0]), Image.Resampling.NEAREST)
    return np.asarray(small)[: input_size[0], : input_size[1]].astype(bool)
