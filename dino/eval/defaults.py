"""The evaluation protocols' defaults (SPEC §8 k-NN, §9 linear), import-light for the command line."""

from __future__ import annotations

from typing import Literal

__all__ = ["BASE_LR", "DEFAULT_KS", "DEFAULT_TEMPERATURE", "LINEAR_INPUTS", "N_LAST_BLOCKS", "LinearInput"]

# SPEC §8 defaults: the paper reports k=20; the reference evaluates several k at once.
DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
# SPEC §9 defaults.
N_LAST_BLOCKS = 4
BASE_LR = 1e-3
# The linear probe's input: the DINO reference's layout, or DINOv2's ([CLS] of the last blocks ⊕ mean patch token).
LinearInput = Literal["dino", "dinov2"]
LINEAR_INPUTS: tuple[str, ...] = ("dino", "dinov2")
