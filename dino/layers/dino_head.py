"""The DINO projection head (SPEC §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.layers.init import init_linear

# SPEC §2: the L2 bottleneck uses F.normalize's default eps.
BOTTLENECK_NORM_EPS = 1e-12


class WeightNormLinear(nn.Module):
    """A bias-free Linear with weight normalisation, ``W = g · v / ‖v‖`` per output row.

    It keeps the parameter names `weight_g` (out, 1) and `weight_v` (out, in) of the deprecated
    ``nn.utils.weight_norm`` so that the released full checkpoints load strictly (SPEC §15, pitfall 2).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=False)
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes.

    Args:
        in_dim: Backbone output dimension.
        out_dim: Number of prototypes K (65536 in the paper).
        use_bn: BatchNorm1d after each hidden Linear (False for ViTs).
        norm_last_layer: Freeze `weight_g` at 1 so the prototypes stay unit-norm.
        nlayers: Number of Linear layers in the MLP (at least 1).
        hidden_dim: Hidden width of the MLP.
        bottleneck_dim: Output width of the MLP.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(init_linear)
        # The reference builds last_layer after the init pass, so it keeps PyTorch's default init.
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2, eps=BOTTLENECK_NORM_EPS)
        return self.last_layer(x)
