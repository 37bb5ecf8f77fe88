"""Weight initialisation shared by the backbone and the head (SPEC §1, §2)."""

from __future__ import annotations

from torch import Tensor, nn

INIT_STD = 0.02


def trunc_normal_(tensor: Tensor) -> Tensor:
    """N(0, 0.02²) truncated at ±2 *absolute* (the reference's quirk: practically untruncated)."""
    return nn.init.trunc_normal_(tensor, std=INIT_STD, a=-2.0, b=2.0)


def init_linear(module: nn.Module) -> None:
    """Apply-hook: truncated-normal weights and zero bias for every Linear."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
