"""The backbones every image-level function accepts: a ViT or a ResNet, told apart without importing torchvision.

``Backbone`` is a string type alias so that annotating with it imports neither network: loading a ViT must not
pay torchvision's import (a second of ``dino info``'s start-up), and a ResNet can only exist once
:mod:`dino.models.resnet` (which imports torchvision) has been imported.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeAlias, TypeGuard

if TYPE_CHECKING:
    from torch import nn

    from dino.models.resnet import ResNetBackbone
    from dino.models.vision_transformer import VisionTransformer

__all__ = ["Backbone", "is_resnet"]

Backbone: TypeAlias = "VisionTransformer | ResNetBackbone"


def is_resnet(model: nn.Module) -> TypeGuard[ResNetBackbone]:
    """Whether `model` is a :class:`~dino.models.resnet.ResNetBackbone`; never imports torchvision (no ResNet
    exists before its module is imported)."""
    module = sys.modules.get("dino.models.resnet")
    return module is not None and isinstance(model, module.ResNetBackbone)
