"""Pooling patch tokens into global descriptors (SPEC §12, §13).

Shared by image retrieval and copy detection: generalized-mean (GeM) pooling of the patch tokens, and the
reference's multiscale averaging of a descriptor over resized copies of the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["GEM_CLAMP_MIN", "GEM_P", "MULTISCALE_SCALES", "gem", "multiscale"]

# SPEC §12: the copy-detection descriptor clamps tokens at 1e-6 and pools with p = 4.
GEM_P = 4.0
GEM_CLAMP_MIN = 1e-6
# SPEC §13: retrieval's `--multiscale 1` averages the features at scales 1, 1/√2 and 1/2.
MULTISCALE_SCALES: tuple[float, ...] = (1.0, 1 / math.sqrt(2), 0.5)


def gem(patch_tokens: Tensor, p: float = GEM_P, eps: float = GEM_CLAMP_MIN) -> Tensor:
    """Generalized-mean pooling ``(mean_i clamp(x_i, eps)^p)^(1/p)`` over the patches.

    Args:
        patch_tokens: Patch tokens as a grid (B, h, w, D) or a sequence (B, N, D), [CLS] excluded.
        p: The GeM exponent (1 = average pooling, → ∞ = max pooling).
        eps: Lower clamp, so that negative activations do not produce NaNs under a fractional power.

    Returns:
        (B, D) pooled descriptors.
    """
    if patch_tokens.ndim == 4:
        patch_tokens = patch_tokens.flatten(1, 2)
    if patch_tokens.ndim != 3:
        raise ValueError(f"expected patch tokens (B, h, w, D) or (B, N, D), got shape {tuple(patch_tokens.shape)}")
    return patch_tokens.clamp(min=eps).pow(p).mean(dim=1).pow(1.0 / p)


def multiscale(
    describe: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = MULTISCALE_SCALES
) -> Tensor:
    """Average a descriptor over rescaled copies of normalised images, then L2-normalise each row.

    The copies are resized as in the reference: ``F.interpolate(bilinear, align_corners=False)`` on the
    normalised tensor, scale 1 being the input itself. The reference divides by the norm of the whole
    batch, which equals the per-row norm at its batch size of 1.

    Args:
        describe: Maps an image batch (B, 3, H, W) to descriptors (B, D).
        images: Normalised image batch.
        scales: Resize factors.
    """
    total = None
    for scale in scales:
        resized = (
            images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        features = describe(resized)
        total = features if total is None else total + features
    return F.normalize(total / len(scales), dim=-1)
