"""`dino attention`: the reference's attention figures and masks for any images (SPEC §10), and the same views
in memory (:class:`AttentionViews`) for the demo. A ResNet has no attention: for it only the normalized-cut mask of
its dense grid is drawn (:func:`save_attention_figures` with ``ncut``, :func:`photo_ncut_views`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from apps.segmentation.defaults import DEFAULT_THRESHOLD, REFERENCE_IMAGE_SIZE
from apps.segmentation.diffusion import diffusion_foreground, grid_to_photo, resized_size
from apps.segmentation.figures import (
    FOREGROUND_COLOR,
    MEAN_CMAP,
    head_colors,
    overlay_masks,
    save_heatmap,
    save_image,
    save_mask_overlay,
    save_summary,
)
from apps.segmentation.inference import ImageAttention, ImageGrid, check_has_attention, iter_attention, iter_grids
from apps.segmentation.masks import (
    mean_attention,
    threshold_attention,
    upsample_nearest,
)
from apps.segmentation.ncut import ncut_foreground_features
from dino.data.io import list_images, open_image
from dino.data.masks import write_indexed_png
from dino.data.transforms import denormalize
from dino.features import DEFAULT_MAX_TOKENS
from dino.models.backbone import is_resnet
from dino.models.vision_transformer import VisionTransformer
from dino.runtime import Runtime

if TYPE_CHECKING:
    from dino.models.backbone import Backbone

__all__ = [
    "AttentionViews",
    "NcutViews",
    "attention_views",
    "output_folders",
    "photo_attention_views",
    "photo_ncut_views",
    "save_attention_figures",
]


@dataclass(frozen=True)
class AttentionViews:
    """What `dino attention` draws of one image, in memory: attention at the network input's resolution (H, W), the
    foreground mask at the photo's own (H', W').

    The figures and the demo both draw from these arrays, so that the demo shows what the figures show.

    Attributes:
        image: The network input, denormalised, (H, W, 3) float; resizing may overshoot [0, 1] slightly, and every
            drawing clips it.
        head_maps: Per-head [CLS] attention, nearest-upsampled, (heads, H, W).
        head_masks: Per-head masks keeping `threshold` of the attention mass, (heads, H, W) bool.
        mean_map: Mean over heads, (H, W).
        head_colors: One RGB colour in [0, 1] per head, (heads, 3).
        photo: The photo itself, (H', W', 3) float in [0, 1], or None when the foreground was not asked for.
        foreground: The foreground mask (attention diffusion, :mod:`apps.segmentation.diffusion`), (H', W') bool, or
            None when not asked for.
    """

    image: np.ndarray
    head_maps: np.ndarray
    head_masks: np.ndarray
    mean_map: np.ndarray
    head_colors: np.ndarray
    photo: np.ndarray | None = None
    foreground: np.ndarray | None = None

    def head_overlay(self, head: int) -> np.ndarray:
        """The network input with head `head`'s mask blended in its colour, (H, W, 3) in [0, 1]."""
        return overlay_masks(self.image.clip(0, 1), self.head_masks[head : head + 1], self.head_colors[[head]])

    def heads_overlay(self) -> np.ndarray:
        """The network input with every head's mask blended in, each in its colour, (H, W, 3) in [0, 1]."""
        return overlay_masks(self.image.clip(0, 1), self.head_masks, self.head_colors)

    def foreground_overlay(self) -> np.ndarray | None:
        """The photo with the foreground mask blended in (as the summary figure colours it), (H', W', 3) in [0, 1];
        None without a foreground mask."""
        if self.photo is None or self.foreground is None:
            return None
        return overlay_masks(self.photo, self.foreground[None], np.array([FOREGROUND_COLOR]))


def attention_views(
    item: ImageAttention,
    threshold: float,
    patch_size: int,
    photo: Image.Image | None = None,
    resized: tuple[int, int] | None = None,
) -> AttentionViews:
    """The views of one image's attention (from :func:`apps.segmentation.inference.iter_attention`).

    Args:
        item: The image's attention maps and keys.
        threshold: Fraction of each head's attention mass the masks keep.
        patch_size: The backbone's patch size (one attention cell covers patch_size² input pixels).
        photo: The photo itself (RGB): also compute the foreground mask at its size.
        resized: (height, width) of the photo after the attention preprocessing's resize, before its crop
            (:func:`apps.segmentation.diffusion.resized_size`); required with `photo`.
    """
    foreground = pixels = None
    if photo is not None:
        if resized is None:
            raise ValueError("the foreground mask needs the photo's resized size")
        foreground = diffusion_foreground(item.maps, item.keys, photo, patch_size, resized)
        pixels = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    return AttentionViews(
        image=denormalize(item.image).permute(1, 2, 0).numpy(),
        head_maps=upsample_nearest(item.maps, patch_size).numpy(),
        head_masks=upsample_nearest(threshold_attention(item.maps, threshold), patch_size).numpy(),
        mean_map=upsample_nearest(mean_attention(item.maps), patch_size).numpy(),
        head_colors=head_colors(item.maps.shape[0]),
        photo=pixels,
        foreground=foreground,
    )


def photo_attention_views(
    model: VisionTransformer,
    photo: Image.Image,
    threshold: float = DEFAULT_THRESHOLD,
    size: int = REFERENCE_IMAGE_SIZE,
    foreground: bool = True,
    device: str = "auto",
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
) -> AttentionViews:
    """The views of one photo in memory, its aspect ratio kept (so that overlays fit the photo).

    Args:
        model: The backbone.
        photo: An RGB photo.
        threshold: Fraction of each head's attention mass the masks keep.
        size: Short side of the network input.
        foreground: Also compute the foreground mask at the photo's size.
        device: Where the forward pass runs.
        max_tokens: Most patch tokens the network input may make; None for no limit.

    Raises:
        TokenBudgetError: The photo at `size` makes more than `max_tokens` patch tokens (before any resizing).
    """
    item = next(
        iter_attention(
            model,
            [photo],
            size=size,
            keep_aspect=True,
            runtime=Runtime(device=str(device), batch_size=1, progress=False, max_tokens=max_tokens),
        )
    )
    if not foreground:
        return attention_views(item, threshold, model.patch_size)
    resized = resized_size((photo.height, photo.width), size, keep_aspect=True)
    return attention_views(item, threshold, model.patch_size, photo, resized)


@dataclass(frozen=True)
class NcutViews:
    """The normalized-cut (TokenCut) foreground of one photo, in memory: what a ResNet, which has no attention, shows.

    Attributes:
        photo: The photo, (H, W, 3) float in [0, 1].
        mask: The foreground at the photo's size, (H, W) bool.
        grid: The (h, w) grid the cut ran on.
    """

    photo: np.ndarray
    mask: np.ndarray
    grid: tuple[int, int]

    def overlay(self) -> np.ndarray:
        """The photo with the mask blended in, (H, W, 3) in [0, 1]."""
        return overlay_masks(self.photo, self.mask[None], np.array([FOREGROUND_COLOR]))


def photo_ncut_views(
    model: Backbone,
    photo: Image.Image,
    size: int = REFERENCE_IMAGE_SIZE,
    device: str = "auto",
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
) -> NcutViews:
    """The normalized-cut foreground of one photo at its own size, its aspect ratio kept: on a ResNet's
    ``grid_layer`` grid, or on a ViT's keys.

    Args:
        model: The backbone.
        photo: An RGB photo.
        size: Short side of the network input.
        device: Where the forward pass runs.
        max_tokens: Most grid cells the network input may make; None for no limit.

    Raises:
        TokenBudgetError: The photo at `size` makes more than `max_tokens` cells (before any resizing).
        ValueError: The grid is over the cut's limit (:data:`apps.segmentation.ncut.NCUT_MAX_PATCHES`).
    """
    runtime = Runtime(device=str(device), batch_size=1, progress=False, max_tokens=max_tokens)
    forward = iter_grids if is_resnet(model) else iter_attention
    item = next(forward(model, [photo], size=size, keep_aspect=True, runtime=runtime))
    resized = resized_size((photo.height, photo.width), size, keep_aspect=True)
    mask = _photo_ncut_mask(item, model.patch_size, photo, resized)
    pixels = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    return NcutViews(pixels, mask, item.grid)


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
    model: Backbone,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    size: int = REFERENCE_IMAGE_SIZE,
    keep_aspect: bool = False,
    foreground: bool = True,
    ncut: bool = False,
    runtime: Runtime | None = None,
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
        runtime: How the backbone runs (:data:`apps.segmentation.inference.ATTENTION_RUNTIME` when None).

    A ResNet has no attention: with it only ``img.png``, ``ncut-mask.png`` and ``ncut-overlay.png`` (the mask on the
    photo) are written, from its ``grid_layer`` grid, and it needs `ncut` without `foreground`.

    Returns:
        The per-image output folders, in input order.

    Raises:
        ValueError: A ResNet without `ncut`, or with `foreground` (which diffuses attention).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if foreground or not ncut:
        check_has_attention(model, "for a foreground mask from its dense grid ask for the normalized cut alone")
    paths = list_images(inputs, required=True)
    folders = output_folders(paths, Path(out))
    if is_resnet(model):
        for item in iter_grids(model, paths, size, keep_aspect, runtime):
            _save_grid_figures(model, item, paths[item.index], folders[item.index], size, keep_aspect)
        return folders
    recipe = _FigureRecipe(threshold, size, keep_aspect, foreground, ncut)
    attention = iter_attention(model, paths, size, keep_aspect, runtime)
    for item in attention:
        _save_image_figures(model, item, paths[item.index], folders[item.index], recipe)
    return folders


@dataclass(frozen=True)
class _FigureRecipe:
    """The options of :func:`save_attention_figures` that shape each image's figures."""

    threshold: float
    size: int
    keep_aspect: bool
    foreground: bool
    ncut: bool

    @property
    def tag(self) -> str:
        """The threshold as the mask files name it (``th0.6``)."""
        return f"th{self.threshold:g}"


def _save_image_figures(
    model: VisionTransformer, item: ImageAttention, path: Path, folder: Path, recipe: _FigureRecipe
) -> None:
    """Every file of one image into `folder`: the attention maps, the photo-sized masks asked for, the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = open_image(path) if recipe.foreground or recipe.ncut else None
    resized = None if photo is None else resized_size((photo.height, photo.width), recipe.size, recipe.keep_aspect)
    views = attention_views(item, recipe.threshold, model.patch_size, photo if recipe.foreground else None, resized)
    _save_attention_maps(folder, views, recipe.tag)
    shown = None
    if photo is not None and resized is not None:
        shown = _save_photo_masks(folder, item, views, model.patch_size, photo, resized, recipe.ncut)
    _save_summary(folder, model, path, views, recipe, shown)


def _save_photo_masks(
    folder: Path,
    item: ImageAttention,
    views: AttentionViews,
    patch_size: int,
    photo: Image.Image,
    resized: tuple[int, int],
    ncut: bool,
) -> np.ndarray | None:
    """The masks at the photo's size: the foreground mask when `views` has it, TokenCut's with `ncut`.

    Returns:
        The mask the summary shows, on the network input (the foreground mask, else TokenCut's), or None.
    """
    shown = None
    if views.foreground is not None:
        _save_foreground(folder, views)
        shown = _at_input_size(views.foreground, resized, views.image.shape[:2])
    if ncut:
        ncut_mask = _save_ncut_mask(folder, item, patch_size, photo, resized)
        shown = shown if shown is not None else _at_input_size(ncut_mask, resized, views.image.shape[:2])
    return shown


def _save_attention_maps(folder: Path, views: AttentionViews, tag: str) -> None:
    """``img.png``, ``attn-mean.png``, and per head ``attn-head{j}.png`` and ``mask_{tag}_head{j}.png``, then
    ``mask_{tag}_heads.png``."""
    save_image(folder / "img.png", views.image)
    save_heatmap(folder / "attn-mean.png", views.mean_map, cmap=MEAN_CMAP)
    colors = views.head_colors
    for head in range(views.head_maps.shape[0]):
        save_heatmap(folder / f"attn-head{head}.png", views.head_maps[head])
        save_mask_overlay(
            folder / f"mask_{tag}_head{head}.png", views.image, views.head_masks[head : head + 1], colors[[head]]
        )
    save_mask_overlay(folder / f"mask_{tag}_heads.png", views.image, views.head_masks, colors)


def _save_foreground(folder: Path, views: AttentionViews) -> None:
    """``mask.png`` (indexed, 1 = foreground) and ``mask-overlay.png`` (on the photo), at the photo's size."""
    assert views.foreground is not None and views.photo is not None
    write_indexed_png(folder / "mask.png", views.foreground.astype(np.uint8))
    save_mask_overlay(folder / "mask-overlay.png", views.photo, views.foreground[None], views.head_colors[:1])


def _save_ncut_mask(
    folder: Path, item: ImageAttention | ImageGrid, patch_size: int, photo: Image.Image, resized: tuple[int, int]
) -> np.ndarray:
    """``ncut-mask.png``: TokenCut's mask at the photo's size (indexed, 1 = foreground); returns it, (H', W') bool."""
    mask = _photo_ncut_mask(item, patch_size, photo, resized)
    write_indexed_png(folder / "ncut-mask.png", mask.astype(np.uint8))
    return mask


def _photo_ncut_mask(
    item: ImageAttention | ImageGrid, patch_size: int, photo: Image.Image, resized: tuple[int, int]
) -> np.ndarray:
    """TokenCut's mask of one image at its photo's size, (H', W') bool; `patch_size` is the grid's stride."""
    grid_mask = ncut_foreground_features(item.cut_features(), item.grid).astype(np.float32)
    return grid_to_photo(grid_mask, patch_size, resized, (photo.height, photo.width), smooth=False) > 0.5


def _save_grid_figures(
    model: Backbone, item: ImageGrid, path: Path, folder: Path, size: int, keep_aspect: bool
) -> None:
    """A ResNet's files of one image into `folder`: ``img.png``, ``ncut-mask.png`` and ``ncut-overlay.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = open_image(path)
    resized = resized_size((photo.height, photo.width), size, keep_aspect)
    save_image(folder / "img.png", denormalize(item.image).permute(1, 2, 0).numpy())
    mask = _save_ncut_mask(folder, item, model.patch_size, photo, resized)
    pixels = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    save_mask_overlay(folder / "ncut-overlay.png", pixels, mask[None], np.array([FOREGROUND_COLOR]))


def _save_summary(
    folder: Path,
    model: VisionTransformer,
    path: Path,
    views: AttentionViews,
    recipe: _FigureRecipe,
    foreground: np.ndarray | None,
) -> None:
    """``summary.png``: every view in one figure at the network input's size, with `foreground` (H, W) if given,
    titled with the image's name, the weights and the threshold."""
    weights = model.provenance.source if model.provenance is not None else ""
    title = f"{path.name} — {weights}, {recipe.tag}"
    save_summary(
        folder / "summary.png",
        views.image,
        views.head_maps,
        views.head_masks,
        views.mean_map,
        recipe.threshold,
        foreground,
        title,
    )


def _at_input_size(mask: np.ndarray, resized: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
    """A photo-sized mask on the network input: resized like the photo, then cropped like it (bottom/right)."""
    small = Image.fromarray(mask.astype(np.uint8)).resize((resized[1], resized[0]), Image.Resampling.NEAREST)
    return np.asarray(small)[: input_size[0], : input_size[1]].astype(bool)
