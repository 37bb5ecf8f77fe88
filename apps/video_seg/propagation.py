"""Label propagation through patch-feature affinities (SPEC §11 `label_propagation`), memory-bounded.

For each target frame the reference builds the full affinity between every target patch and every patch
of up to 8 context frames, (n_ctx, hw, hw) in fp32, masks it to a square neighbourhood, keeps the top-k
sources of each target jointly over all context frames, normalises each target's column and mixes the
context labels with it. At ViT-S/8 on 480×1152 frames that is 8·8640² floats = 2.4 GB before the copies
made by the transpose, top-k and mask, which ran out of memory on a 16 GB GPU (issue #98).

Here the same numbers are computed in chunks of target patches. A chunk of target rows can only reach
source rows within ``radius`` of it, so only that band of source patches is multiplied; everything
outside the band is zero in the reference's masked affinity and can neither change the k-th largest value
(unless the band holds fewer than k entries, handled below) nor the column sums. Each chunk's affinity,
(n_ctx, targets, band sources), is kept under ``max_affinity_mb``.

With fp32 affinities the result equals the reference up to float summation order (a few ulps in the soft
masks); the masks after argmax are identical on the sequences tested (tests/video_seg).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from apps.video_seg.defaults import MAX_AFFINITY_MB, N_LAST_FRAMES, NEIGHBOURHOOD_RADIUS, TEMPERATURE, TOP_K
from dino.runtime import TORCH_DTYPES, torch_dtype

__all__ = [
    "LabelPropagator",
    "PropagationConfig",
    "labels_from_soft_mask",
    "minmax_normalise",
    "neighbourhood_mask",
    "propagate_labels",
]


@dataclass(frozen=True)
class PropagationConfig:
    """Options of the propagation; the defaults reproduce the reference.

    Attributes:
        n_last_frames: Previous frames kept as context besides the first frame.
        radius: Neighbourhood radius in patches (square window); 0 disables the restriction.
        topk: Sources kept per target patch, jointly over all context frames.
        temperature: Affinity temperature in ``exp(similarity / temperature)``.
        minmax_norm: Min–max normalise each upsampled channel before the argmax (reference quirk).
        max_affinity_mb: Upper bound on the size of one affinity chunk, in MiB.
        affinity_dtype: ``fp32`` (exact), or ``bf16``/``fp16`` for the similarity, exp and top-k (GPU
            speed and memory); column sums and label mixing stay fp32.
    """

    n_last_frames: int = N_LAST_FRAMES
    radius: int = NEIGHBOURHOOD_RADIUS
    topk: int = TOP_K
    temperature: float = TEMPERATURE
    minmax_norm: bool = True
    max_affinity_mb: float = MAX_AFFINITY_MB
    affinity_dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.n_last_frames < 0 or self.radius < 0 or self.topk < 1:
            raise ValueError("n_last_frames and radius must be >= 0 and topk >= 1")
        if self.temperature <= 0 or self.max_affinity_mb <= 0:
            raise ValueError("temperature and max_affinity_mb must be positive")
        if self.affinity_dtype not in TORCH_DTYPES:
            raise ValueError(f"affinity_dtype must be one of {sorted(TORCH_DTYPES)}, got {self.affinity_dtype!r}")


# ---------------------------------------------------------------------------- the steps
def neighbourhood_mask(target_index: Tensor, source_index: Tensor, grid_width: int, radius: int) -> Tensor:
    """M[i, j] = |row_i − row_j| ≤ radius and |col_i − col_j| ≤ radius, for flat patch indices (bool).

    The reference's ``restrict_neighborhood`` builds the full (hw, hw) mask with a quadruple Python loop;
    this is the same mask for any subset of target and source patches.
    """
    target_row, target_col = target_index // grid_width, target_index % grid_width
    source_row, source_col = source_index // grid_width, source_index % grid_width
    close_rows = (target_row[:, None] - source_row[None, :]).abs() <= radius
    close_cols = (target_col[:, None] - source_col[None, :]).abs() <= radius
    return close_rows & close_cols


def joint_topk_threshold(affinity: Tensor, k: int) -> Tensor:
    """The k-th largest value of each target over all context frames and sources: (targets,).

    `affinity` is (n_ctx, targets, sources). Taking the top-k per context frame first and then the top-k
    of their union gives the same k-th value as one top-k over the flattened n_ctx·sources axis, without
    the transposed copy. Returns zeros when there are fewer than k entries (then all are kept).
    """
    contexts, targets, sources = affinity.shape
    if contexts * sources < k:
        return affinity.new_zeros(targets)
    per_context = affinity.topk(min(k, sources), dim=2).values  # (n_ctx, targets, k')
    candidates = per_context.permute(1, 0, 2).reshape(targets, -1)
    return candidates.topk(k, dim=1).values[:, -1]


def minmax_normalise(mask: Tensor) -> Tensor:
    """Min–max normalise each channel of (C, H, W) to [0, 1] in place, as the reference's ``norm_mask``.

    Channels whose maximum is not positive are left alone. A constant positive channel becomes 0/0 = NaN,
    exactly as in the reference (the argmax then follows torch.max's NaN rule).
    """
    for channel in mask:
        if channel.max() > 0:
            shifted = channel - channel.min()
            channel.copy_(shifted / shifted.max())
    return mask


def labels_from_soft_mask(
    soft: Tensor, patch_size: int, output_size: tuple[int, int], minmax_norm: bool = True
) -> np.ndarray:
    """Turn a patch-resolution soft mask (C, h, w) into a label map (H, W) uint8 at `output_size`.

    Bilinear upsampling by the patch size, optional per-channel min–max, argmax over channels, then
    nearest resizing to the original frame size with PIL as in the reference (SPEC §11 Output).
    """
    upsampled = F.interpolate(
        soft[None], scale_factor=patch_size, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )[0]
    if minmax_norm:
        upsampled = minmax_normalise(upsampled)
    labels = torch.max(upsampled, dim=0).indices.to(torch.uint8).cpu().numpy()
    height, width = output_size
    resized = Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST)
    return np.array(resized)


# ---------------------------------------------------------------------------- chunking
def _chunks(
    height: int, width: int, contexts: int, radius: int, bytes_per_entry: int, budget: float
) -> Iterator[tuple[int, int, int, int]]:
    """Target ranges [start, stop) and source ranges [band_start, band_stop) of flat patch indices.

    Whole target rows are grouped as long as their affinity fits; if a single row does not, the row is
    split. Raises ValueError if even one target patch's affinity exceeds the budget.
    """

    def band(first_row: int, last_row: int) -> tuple[int, int]:
        if radius <= 0:
            return 0, height * width
        return max(0, first_row - radius) * width, min(height, last_row + radius + 1) * width

    def cost(targets: int, first_row: int, last_row: int) -> float:
        start, stop = band(first_row, last_row)
        return contexts * targets * (stop - start) * bytes_per_entry

    rows_per_chunk = 0
    while rows_per_chunk < height and cost((rows_per_chunk + 1) * width, 0, rows_per_chunk) <= budget:
        rows_per_chunk += 1
    # The band of a middle chunk is the widest; size by it so every chunk fits.
    while rows_per_chunk > 0 and cost(rows_per_chunk * width, radius, radius + rows_per_chunk - 1) > budget:
        rows_per_chunk -= 1
    if rows_per_chunk > 0:
        for first_row in range(0, height, rows_per_chunk):
            last_row = min(height, first_row + rows_per_chunk) - 1
            yield (first_row * width, (last_row + 1) * width, *band(first_row, last_row))
        return
    widest = cost(1, radius, radius)
    per_chunk = int(budget // widest)
    if per_chunk < 1:
        needed = widest / 2**20
        raise ValueError(
            f"max_affinity_mb={budget / 2**20:g} is too small: one target patch needs {needed:.3f} MiB of affinity"
        )
    for row in range(height):
        for start in range(row * width, (row + 1) * width, per_chunk):
            yield (start, min(start + per_chunk, (row + 1) * width), *band(row, row))


# ---------------------------------------------------------------------------- one target frame
def propagate_labels(
    target: Tensor,
    sources: Tensor,
    source_labels: Tensor,
    grid: tuple[int, int],
    config: PropagationConfig = PropagationConfig(),
) -> Tensor:
    """Propagate context labels to one target frame (SPEC §11 `label_propagation`, steps 1–7).

    Args:
        target: Target patch features (h·w, D), unnormalised.
        sources: Context features (n_ctx, D, h·w), each normalised along D (:meth:`LabelPropagator.source`).
        source_labels: Context soft labels (n_ctx, C, h·w), in the same order as `sources`.
        grid: The patch grid (h, w) shared by all frames.
        config: Propagation options.

    Returns:
        The target's soft labels (C, h·w); each column is a convex combination of context labels.
    """
    height, width = grid
    contexts = sources.shape[0]
    dtype = TORCH_DTYPES[config.affinity_dtype]
    target = F.normalize(target, dim=1, p=2).to(dtype)
    sources = sources.to(dtype)
    source_labels = source_labels.float()
    output = source_labels.new_empty(source_labels.shape[1], height * width)
    budget = config.max_affinity_mb * 2**20
    bytes_per_entry = torch.finfo(dtype).bits // 8
    for start, stop, band_start, band_stop in _chunks(height, width, contexts, config.radius, bytes_per_entry, budget):
        affinity = torch.matmul(target[start:stop], sources[:, :, band_start:band_stop])  # (n_ctx, T, S)
        affinity = affinity.div_(config.temperature).exp_()
        if config.radius > 0:
            affinity.mul_(_chunk_mask(start, stop, band_start, band_stop, width, config.radius, target.device))
        threshold = joint_topk_threshold(affinity, config.topk)
        affinity.masked_fill_(affinity < threshold[None, :, None], 0)
        affinity = affinity.float()
        affinity.div_(affinity.sum(dim=(0, 2))[None, :, None])
        # Σ over context frames and sources of labels · affinity; bmm is 20× faster than the einsum on CPUs.
        output[:, start:stop] = torch.bmm(source_labels[:, :, band_start:band_stop], affinity.transpose(1, 2)).sum(0)
    return output


@functools.lru_cache(maxsize=256)
def _chunk_mask(
    start: int, stop: int, band_start: int, band_stop: int, width: int, radius: int, device: torch.device
) -> Tensor:
    """:func:`neighbourhood_mask` of one chunk, built once per video size instead of once per frame."""
    return neighbourhood_mask(
        torch.arange(start, stop, device=device), torch.arange(band_start, band_stop, device=device), width, radius
    )


# ---------------------------------------------------------------------------- a whole video
class LabelPropagator:
    """Propagates a first-frame segmentation through a video, one target frame at a time.

    Context = the first frame (features + one-hot GT) and a FIFO of the last `n_last_frames` frames
    (features + soft propagated labels at patch resolution), oldest first (SPEC §11 Context). Each frame's
    features are normalised once and cached; only the new frame goes through the backbone.

    Args:
        first_features: Patch features of frame 0, (h·w, D).
        first_labels: One-hot labels of frame 0 at patch resolution, (C, h, w).
        config: Propagation options.
    """

    def __init__(self, first_features: Tensor, first_labels: Tensor, config: PropagationConfig = PropagationConfig()):
        self.config = config
        self.grid = (first_labels.shape[1], first_labels.shape[2])
        if first_features.shape[0] != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"{first_features.shape[0]} patch features do not match the {self.grid[0]}x{self.grid[1]} label grid"
            )
        self.first = (self.source(first_features), first_labels.reshape(first_labels.shape[0], -1).float())
        self.recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=config.n_last_frames or None)

    @staticmethod
    def source(features: Tensor) -> Tensor:
        """Features (h·w, D) as a context frame: (D, h·w) normalised along D, the reference's layout."""
        return F.normalize(features.T.contiguous()[None], dim=1, p=2)[0]

    def step(self, features: Tensor) -> Tensor:
        """Propagate to the next frame given its features (h·w, D); returns its soft labels (C, h, w)."""
        context = [self.first, *self.recent]
        sources = torch.stack([features for features, _ in context])
        labels = torch.stack([labels for _, labels in context])
        soft = propagate_labels(features, sources, labels, self.grid, self.config)
        if self.config.n_last_frames > 0:
            self.recent.append((self.source(features), soft))
        return soft.reshape(-1, *self.grid)


def affinity_budget_mb(grid: tuple[int, int], contexts: int, radius: int, dtype: str = "fp32") -> dict[str, float]:
    """Affinity sizes in MiB for a grid: the reference's full tensor and one row of targets with its band.

    ``bench/video_seg_throughput.py`` prints them for its grids (the table of docs/video_seg.md): they show which
    budget fits (e.g. ViT-S/8 on 480×1152: 60×144).
    """
    height, width = grid
    bytes_per_entry = torch.finfo(torch_dtype(dtype)).bits // 8
    band_rows = height if radius <= 0 else min(height, 2 * radius + 1)
    return {
        "reference_full": contexts * (height * width) ** 2 * bytes_per_entry / 2**20,
        "one_row_band": contexts * width * band_rows * width * bytes_per_entry / 2**20,
        "one_patch_band": contexts * band_rows * width * bytes_per_entry / 2**20,
    }
