"""Figures of `dino attention`: per-head heatmaps, mask overlays with contours, the mean map, one summary."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from skimage.measure import find_contours  # noqa: E402

from dino.atomic import atomic_output_path  # noqa: E402

__all__ = ["head_colors", "overlay_masks", "save_heatmap", "save_image", "save_mask_overlay", "save_summary"]

HEATMAP_CMAP = "viridis"  # plt.imsave's default, as the reference's attn-head*.png
MEAN_CMAP = "inferno"  # video_generation.py's mean-attention colormap
OVERLAY_ALPHA = 0.5  # reference mask overlay opacity
FOREGROUND_COLOR = (1.0, 0.2, 0.6)
FIGURE_DPI = 100


def head_colors(count: int) -> np.ndarray:
    """`count` clearly distinct RGB colours in [0, 1] (tab10, then tab20), stable across images."""
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("tab20").colors[1::2]
    return np.array([palette[i % len(palette)] for i in range(count)])


def overlay_masks(image: np.ndarray, masks: np.ndarray, colors: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend each (H, W) mask of `masks` (K, H, W) into an (H, W, 3) float image in its colour."""
    blended = image.astype(np.float64).copy()
    for mask, color in zip(masks, colors, strict=True):
        blended[mask] = (1 - alpha) * blended[mask] + alpha * np.asarray(color)
    return blended.clip(0, 1)


def _draw_contours(axes: Axes, masks: np.ndarray, colors: np.ndarray, linewidth: float) -> None:
    for mask, color in zip(masks, colors, strict=True):
        # Padding closes the contours of masks touching the border, as in the reference.
        padded = np.pad(mask.astype(np.float64), 1)
        for contour in find_contours(padded, 0.5):
            axes.plot(contour[:, 1] - 1, contour[:, 0] - 1, color=color, linewidth=linewidth)


def _show_masks(
    axes: Axes, image: np.ndarray, masks: np.ndarray, colors: np.ndarray, linewidth: float, alpha: float = OVERLAY_ALPHA
) -> None:
    axes.imshow(overlay_masks(image, masks, colors, alpha))
    _draw_contours(axes, masks, colors, linewidth)
    axes.set_xlim(-0.5, image.shape[1] - 0.5)
    axes.set_ylim(image.shape[0] - 0.5, -0.5)


def _save_figure(figure: Figure, path: str | os.PathLike[str]) -> None:
    with atomic_output_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=FIGURE_DPI)
    plt.close(figure)


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Save an (H, W, 3) float image in [0, 1] as PNG, atomically."""
    with atomic_output_path(path) as temporary:
        plt.imsave(temporary, image.clip(0, 1), format="png")


def save_heatmap(path: str | os.PathLike[str], heatmap: np.ndarray, cmap: str = HEATMAP_CMAP) -> None:
    """Save an (H, W) map as a colour-mapped PNG at its own resolution, atomically."""
    with atomic_output_path(path) as temporary:
        plt.imsave(temporary, heatmap, cmap=cmap, format="png")


def save_mask_overlay(path: str | os.PathLike[str], image: np.ndarray, masks: np.ndarray, colors: np.ndarray) -> None:
    """Save the image with masks (K, H, W) blended in and outlined, at the image's resolution (several masks:
    outlines only, so that overlapping heads stay readable)."""
    height, width = image.shape[:2]
    figure = plt.figure(figsize=(width / FIGURE_DPI, height / FIGURE_DPI))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    _show_masks(axes, image, masks, colors, linewidth=1.5, alpha=OVERLAY_ALPHA if len(masks) == 1 else 0.0)
    _save_figure(figure, path)


def save_summary(
    path: str | os.PathLike[str],
    image: np.ndarray,
    head_maps: np.ndarray,
    head_masks: np.ndarray,
    mean_map: np.ndarray,
    threshold: float,
    foreground: np.ndarray | None = None,
    title: str = "",
) -> None:
    """One figure: image, mean attention, all heads' masks, the foreground mask (if given) on top; each head's
    heatmap and mask below.

    Args:
        path: Output PNG.
        image: (H, W, 3) float image in [0, 1].
        head_maps: (heads, H, W) attention heatmaps.
        head_masks: (heads, H, W) thresholded masks.
        mean_map: (H, W) mean-over-heads attention.
        threshold: Kept mass, for the titles.
        foreground: (H, W) foreground mask (attention diffusion, or the normalized cut), or None.
        title: Figure title (e.g. the image name and weights).
    """
    heads = head_maps.shape[0]
    colors = head_colors(heads)
    top = ["image", "mean attention", f"all heads' masks ({threshold:.0%} of mass)"]
    if foreground is not None:
        top.append("foreground mask")
    columns = max(heads, len(top))
    aspect = image.shape[0] / image.shape[1]
    panel = 2.2
    figure = plt.figure(figsize=(columns * panel, 3 * panel * aspect + 0.8), layout="constrained")
    grid = figure.add_gridspec(3, columns)
    top_grid = grid[0, :].subgridspec(1, len(top))
    top_axes = [figure.add_subplot(top_grid[0, i]) for i in range(len(top))]
    top_axes[0].imshow(image)
    top_axes[1].imshow(mean_map, cmap=MEAN_CMAP)
    # Overlapping fills of many heads turn to mud: outlines only.
    _show_masks(top_axes[2], image, head_masks, colors, linewidth=1.0, alpha=0.0)
    if foreground is not None:
        _show_masks(top_axes[3], image, foreground[None], np.array([FOREGROUND_COLOR]), linewidth=1.5)
    for axes, name in zip(top_axes, top, strict=True):
        axes.set_title(name, fontsize=9)
    for head in range(heads):
        heat = figure.add_subplot(grid[1, head])
        heat.imshow(head_maps[head], cmap=HEATMAP_CMAP)
        heat.set_title(f"head {head}", fontsize=9, color=colors[head])
        mask = figure.add_subplot(grid[2, head])
        _show_masks(mask, image, head_masks[head : head + 1], colors[head : head + 1], linewidth=1.0)
        mask.set_title(f"head {head} mask", fontsize=9, color=colors[head])
    for axes in figure.axes:
        axes.set_xticks([])
        axes.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    _save_figure(figure, path)
