"""ResNets as DINO and DenseCL release them (SPEC §23, §24): torchvision's definitions without the classifier.

DINO's ``main_dino.py --arch resnet50`` builds ``torchvision.models.resnet50()`` and sets ``fc = nn.Identity()``,
so its backbone's state dict holds torchvision's keys without ``fc``; DenseCL's released backbones hold the same
keys. :class:`ResNetBackbone` is that network at any of torchvision's depths (18 and 34 with basic blocks, 50, 101
and 152 with bottlenecks), adding the dense grids the apps use (layer3 and layer4). ResNet-50 is the one the
releases use; ResNet-18 is the small network of the CPU training presets.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from dino.models.provenance import WeightsProvenance

__all__ = ["RESNET_DEPTHS", "ResNetBackbone", "ResNetFeatures", "resnet18", "resnet50"]

# torchvision's block type and blocks per stage for each depth.
RESNET_DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNetFeatures(NamedTuple):
    """One forward pass of :class:`ResNetBackbone`.

    Attributes:
        pooled: The global average of layer4, (B, C4): the embedding DINO's k-NN and linear evaluations use.
        layer3: Stride-16 grid, (B, C3, H/16, W/16), for tasks that want a finer grid.
        layer4: Stride-32 grid, (B, C4, H/32, W/32), the one DenseCL's dense loss and correspondence use.

    C4 is 2048 and C3 1024 for ResNet-50/101/152, 512 and 256 for ResNet-18/34.
    """

    pooled: Tensor
    layer3: Tensor
    layer4: Tensor


class ResNetBackbone(ResNet):
    """torchvision's ResNet with ``fc = Identity`` (DINO's and DenseCL's backbone): ``forward`` gives the pooled
    feature, :meth:`forward_features` the grids too.

    Attributes:
        depth: 18, 34, 50, 101 or 152.
        embed_dim: Width of the pooled feature and of layer4 (2048, or 512 with basic blocks).
        layer3_dim: Width of layer3 (1024, or 256 with basic blocks).
        provenance: Where the weights came from, set by :func:`dino.checkpoint.load_resnet`; None for a model
            built here with random weights.
    """

    def __init__(self, depth: int = 50) -> None:
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"no ResNet of depth {depth}; choose one of {sorted(RESNET_DEPTHS)}")
        block, layers = RESNET_DEPTHS[depth]
        super().__init__(block, list(layers))
        self.fc = nn.Identity()
        self.depth = depth
        self.embed_dim = 512 * block.expansion
        self.layer3_dim = 256 * block.expansion
        self.provenance: WeightsProvenance | None = None

    @property
    def arch(self) -> str:
        """The architecture's name, ``resnet50`` for instance."""
        return f"resnet{self.depth}"

    def forward_features(self, x: Tensor) -> ResNetFeatures:
        """The pooled feature and the layer3 and layer4 grids of images `x`, (B, 3, H, W), in one pass."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        layer3 = self.layer3(self.layer2(self.layer1(x)))
        layer4 = self.layer4(layer3)
        return ResNetFeatures(torch.flatten(self.avgpool(layer4), 1), layer3, layer4)


def resnet50() -> ResNetBackbone:
    """ResNet-50 without the classifier, randomly initialised as torchvision does."""
    return ResNetBackbone(50)


def resnet18() -> ResNetBackbone:
    """ResNet-18 without the classifier, randomly initialised as torchvision does."""
    return ResNetBackbone(18)
