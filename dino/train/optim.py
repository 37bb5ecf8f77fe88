"""Parameter groups, gradient clipping and last-layer freezing of the DINO recipe (SPEC §5)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "build_optimizer",
    "cancel_gradients_last_layer",
    "clip_gradients",
    "clip_gradients_global",
    "get_params_groups",
]

# SPEC §5: ε added to each gradient norm before dividing.
CLIP_EPS = 1e-6
LAST_LAYER_NAME = "last_layer"
SGD_MOMENTUM = 0.9


def get_params_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Two groups: weights with ndim > 1 not named ``*.bias`` (weight-decayed; this includes `cls_token`
    and `pos_embed`, SPEC §15.2), then biases and 1-D parameters with ``weight_decay=0``. Frozen
    parameters (``requires_grad=False``, e.g. `last_layer.weight_g` with `norm_last_layer`) are left out.
    """
    regularized: list[nn.Parameter] = []
    not_regularized: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def build_optimizer(
    param_groups: list[dict[str, Any]], name: Literal["adamw", "sgd"] = "adamw"
) -> torch.optim.Optimizer:
    """AdamW with default betas/eps (ViTs), or SGD with momentum 0.9; lr and wd are set by the schedules."""
    if name == "adamw":
        return torch.optim.AdamW(param_groups)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=0, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw or sgd")


def clip_gradients(model: nn.Module, clip: float) -> Tensor:
    """The reference's per-parameter clipping: scale each gradient whose norm exceeds `clip` down to it.

    The coefficient is ``clip / (‖g‖ + 1e-6)``, applied only when < 1 (multiplying by exactly 1 otherwise
    keeps the gradient bit-identical and avoids a host sync per parameter).

    Returns:
        The per-parameter gradient norms before clipping.
    """
    norms = []
    for param in model.parameters():
        if param.grad is None:
            continue
        norm = param.grad.detach().norm(2)
        norms.append(norm)
        param.grad.mul_((clip / (norm + CLIP_EPS)).clamp(max=1.0))
    return torch.stack(norms) if norms else torch.zeros(0)


def clip_gradients_global(model: nn.Module, clip: float) -> Tensor:
    """Global-norm clipping over all gradients (DINOv2's choice); returns the total norm before clipping."""
    return torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the gradients of the head's last layer during the first `freeze_last_layer` epochs."""
    if epoch >= freeze_last_layer:
        return
    for name, param in model.named_parameters():
        if LAST_LAYER_NAME in name:
            param.grad = None
