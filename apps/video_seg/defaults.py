"""The DAVIS label-propagation defaults (SPEC §11, the reference's ``eval_video_segmentation.py``), import-light
for the command line."""

from __future__ import annotations

__all__ = ["MAX_AFFINITY_MB", "NEIGHBOURHOOD_RADIUS", "N_LAST_FRAMES", "TEMPERATURE", "TOP_K"]

N_LAST_FRAMES = 7
NEIGHBOURHOOD_RADIUS = 12
TOP_K = 5
TEMPERATURE = 0.1  # hard-coded in the reference
# Largest affinity chunk; results do not depend on it.
MAX_AFFINITY_MB = 512.0
