"""ResNets as DINO and DenseCL release them (SPEC §23, §24): torchvision's definitions without the classifier.

DINO's ``main_dino.py --arch resnet50`` builds ``torchvision.models.resnet50()`` and sets ``fc = nn.Identity()``,
so its backbone's state dict holds torchvision's keys without ``fc``; DenseCL's released backbones hold the same
keys. :class:`ResNetBackbone` is that network at any of torchvision's depths (18 and 34 with basic blocks, 50, 101
and 152 with bottlenecks), adding the dense grids the apps use (layer3 and layer4). ResNet-50 is the one the
releases use; ResNet-18 is the small network of the CPU training presets.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from dino.models.provenance import WeightsProvenance

__all__ = ["GRID_STRIDES", "RESNET_DEPTHS", "GridLayer", "ResNetBackbone", "ResNetFeatures", "resnet18", "resnet50"]

GridLayer = Literal["layer3", "layer4"]
# Pixels per cell of each grid: four stride-2 stages (conv1, maxpool, layer2, layer3) to layer3, five to layer4.
GRID_STRIDES: dict[str, int] = {"layer3": 16, "layer4": 32}

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

    The dense grid the apps see (:meth:`forward_dense`, ``FeatureExtractor``'s patch tokens) is layer4 unless
    :attr:`grid_layer` says layer3; :attr:`patch_size` is that grid's stride, so that code written for a ViT's
    patch grid (resizing to a multiple of it, upsampling a grid to pixels) works unchanged.
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
        self._grid_layer: GridLayer = "layer4"

    @property
    def grid_layer(self) -> GridLayer:
        """Which grid :meth:`forward_dense` returns: ``layer4`` (stride 32, the default) or ``layer3`` (stride 16)."""
        return self._grid_layer

    @grid_layer.setter
    def grid_layer(self, layer: GridLayer) -> None:
        if layer not in get_args(GridLayer):
            raise ValueError(f"grid_layer must be one of {get_args(GridLayer)}, got {layer!r}")
        self._grid_layer = layer

    @property
    def patch_size(self) -> int:
        """The stride of the chosen grid in pixels (32 for layer4, 16 for layer3): a ViT's patch size's role."""
        return GRID_STRIDES[self._grid_layer]

    @property
    def grid_dim(self) -> int:
        """Channels of the chosen grid (:attr:`embed_dim` for layer4, :attr:`layer3_dim` for layer3)."""
        return self.embed_dim if self._grid_layer == "layer4" else self.layer3_dim

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) of the chosen grid for an input of `height` × `width` pixels.

        Every stride-2 stage (3×3 or 7×7 convolutions and the max-pool, each padded by half its kernel) maps a
        side n to (n − 1) // 2 + 1, which is ceil(n / 2); composed, ceil(n / stride). Sizes that are not multiples
        of the stride therefore round up, unlike a ViT's patch grid.
        """
        stride = self.patch_size
        return -(-height // stride), -(-width // stride)

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

    def forward_dense(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled feature (B, embed_dim) and the chosen grid channels-last, (B, h, w, grid_dim): the layout of
        a ViT's patch-token grid, so that the apps handle both backbones' grids alike."""
        features = self.forward_features(x)
        grid = features.layer4 if self._grid_layer == "layer4" else features.layer3
        return features.pooled, grid.permute(0, 2, 3, 1)


def resnet50() -> ResNetBackbone:
    """ResNet-50 without the classifier, randomly initialised as torchvision does."""
    return ResNetBackbone(50)


def resnet18() -> ResNetBackbone:
    """ResNet-18 without the classifier, randomly initialised as torchvision does."""
    return ResNetBackbone(18)
