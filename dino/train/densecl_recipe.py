"""DenseCL's training recipe around :class:`dino.train.densecl.DenseCL` (SPEC §23): the model of the ``densecl``
config section, its optimiser, and the checks that must fail at start-up rather than at the first enqueue.

The reference is OpenSelfSup's ``configs/selfsup/densecl/densecl_imagenet_200ep.py`` (WXinlong/DenseCL)::

    optimizer = dict(type='SGD', lr=0.03, weight_decay=0.0001, momentum=0.9)
    lr_config = dict(policy='CosineAnnealing', min_lr=0.)
    data = dict(imgs_per_gpu=32, ...)  # total 32*8=256

With no ``paramwise_options``, OpenSelfSup's ``build_optimizer`` hands every parameter to one SGD group, so
BatchNorm weights and biases are weight-decayed too (unlike DINO's two groups, SPEC §5). mmcv's cosine hook is
``by_epoch`` by default: the lr changes once per epoch (:func:`dino.train.schedules.epoch_cosine_scheduler`).
``optim.lr`` keeps the meaning it has for DINO, the lr of a total batch of 256, scaled linearly with the total
batch: the reference's 8 × 32 = 256 images get exactly its 0.03, and another batch the lr the linear scaling
rule (Goyal et al., which MoCo follows) gives it.
"""

from __future__ import annotations

import torch
from torch import nn

from dino.models.architectures import RESNET_ARCHITECTURES
from dino.train.config import TrainConfig
from dino.train.densecl import DenseCL
from dino.train.optim import SGD_MOMENTUM

__all__ = ["build_densecl", "build_densecl_optimizer", "check_densecl_batch"]


def check_densecl_batch(config: TrainConfig, world_size: int) -> None:
    """Refuse, before any work, a batch the queues or the BatchNorm splits cannot take.

    Raises:
        ValueError: ``densecl.queue_len`` is not a multiple of the global batch (each enqueue writes one global
            batch and must not straddle the queue's end, as the reference asserts), or ``densecl.bn_splits`` does
            not divide the per-process batch.
    """
    per_process, queue_len = config.optim.batch_size_per_gpu, config.densecl.queue_len
    global_batch = per_process * world_size
    if queue_len % global_batch:
        raise ValueError(
            f"config densecl.queue_len={queue_len} is not a multiple of the global batch {global_batch} "
            f"(optim.batch_size_per_gpu={per_process} x {world_size} processes)"
        )
    splits = config.densecl.bn_splits
    if splits and per_process % splits:
        raise ValueError(f"config densecl.bn_splits={splits} does not divide optim.batch_size_per_gpu={per_process}")


def build_densecl(config: TrainConfig) -> DenseCL:
    """A DenseCL model of ``model.arch`` and the ``densecl`` section: a randomly initialised torchvision ResNet as
    the query backbone, the key encoder a copy of it (``densecl.bn_splits`` 0 lets the model choose: 1 under
    torchrun, 2 in one process)."""
    # Imported here: torchvision costs a second of start-up.
    from dino.models.resnet import ResNetBackbone

    section = config.densecl
    return DenseCL(
        ResNetBackbone(RESNET_ARCHITECTURES[config.model.arch]),
        hid_dim=section.hid_dim,
        feat_dim=section.feat_dim,
        queue_len=section.queue_len,
        momentum=section.momentum,
        temperature=section.temperature,
        bn_splits=section.bn_splits or None,
    )


def build_densecl_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The reference's SGD (momentum 0.9) over every trainable parameter in one group, all weight-decayed (the
    module docstring); lr and weight decay are set by the schedules at every step. The frozen key encoder is left
    out: it never has a gradient, so the reference's SGD never touches it either."""
    params = [param for param in model.parameters() if param.requires_grad]
    return torch.optim.SGD([{"params": params}], lr=0, momentum=SGD_MOMENTUM)
