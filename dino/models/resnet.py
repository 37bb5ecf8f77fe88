"""ResNet-50 as DINO and DenseCL release it (SPEC §23, §24): torchvision's definition without the classifier.

DINO's ``main_dino.py --arch resnet50`` builds ``torchvision.models.resnet50()`` and sets ``fc = nn.Identity()``,
so its backbone's state dict holds torchvision's keys without ``fc``; DenseCL's released backbones hold the same
keys. :class:`ResNet50` is that network, adding the dense grids the apps use (layer3 and layer4).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from dino.models.provenance import WeightsProvenance

__all__ = ["ResNet50", "ResNetFeatures"]


class ResNetFeatures(NamedTuple):
    """One forward pass of :class:`ResNet50`.

    Attributes:
        pooled: The global average of layer4, (B, 2048): the embedding DINO's k-NN and linear evaluations use.
        layer3: Stride-16 grid, (B, 1024, H/16, W/16), for tasks that want a finer grid.
        layer4: Stride-32 grid, (B, 2048, H/32, W/32), the one DenseCL's dense loss and correspondence use.
    """

    pooled: Tensor
    layer3: Tensor
    layer4: Tensor


class ResNet50(ResNet):
    """torchvision's ResNet-50 with ``fc = Identity`` (DINO's and DenseCL's backbone): ``forward`` gives the
    2048-d pooled feature, :meth:`forward_features` the grids too.

    Attributes:
        embed_dim: Width of the pooled feature (2048).
        provenance: Where the weights came from, set by :func:`dino.checkpoint.load_resnet50`; None for a model
            built here with random weights.
    """

    embed_dim = 2048

    def __init__(self) -> None:
        super().__init__(Bottleneck, [3, 4, 6, 3])
        self.fc = nn.Identity()
        self.provenance: WeightsProvenance | None = None

    def forward_features(self, x: Tensor) -> ResNetFeatures:
        """The pooled feature and the layer3 and layer4 grids of images `x`, (B, 3, H, W), in one pass."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        layer3 = self.layer3(self.layer2(self.layer1(x)))
        layer4 = self.layer4(layer3)
        return ResNetFeatures(torch.flatten(self.avgpool(layer4), 1), layer3, layer4)
