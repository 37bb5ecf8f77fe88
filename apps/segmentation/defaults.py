"""The segmentation app's protocol constants (SPEC §10, TokenCut), import-light for the command line."""

from __future__ import annotations

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_THRESHOLD", "MASK_METHODS", "NCUT_EPS", "NCUT_TAU", "REFERENCE_IMAGE_SIZE"]

# SPEC §10: visualize_attention.py resizes to a square 480×480 (bilinear) and keeps 60% of the mass.
REFERENCE_IMAGE_SIZE = 480
DEFAULT_THRESHOLD = 0.6
# TokenCut's defaults: similarity threshold for an edge and the weight of a non-edge.
NCUT_TAU = 0.2
NCUT_EPS = 1e-5
# Attention maps at 480² hold heads × N² weights per image: batches of 8 (`dino attention` and `seg-eval`).
DEFAULT_BATCH_SIZE = 8
# The foreground masks `dino seg-eval --method` scores.
MASK_METHODS: tuple[str, ...] = ("diffusion", "attention", "ncut")
