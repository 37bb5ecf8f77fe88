"""How the trainer's networks run over several processes (SPEC §6, §24): DistributedDataParallel, and SyncBatchNorm
for networks with BatchNorm, as DINO's ``main_dino.py`` does.

The reference, for a model with BatchNorm (a ResNet)::

    student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    # we need DDP wrapper to have synchro batch norms working...
    teacher = nn.parallel.DistributedDataParallel(teacher, device_ids=[args.gpu])

and only then sets ``requires_grad=False`` on the teacher. A ViT has no BatchNorm: only the student is wrapped.

torch's SyncBatchNorm synchronises only GPU tensors: in a multi-process training-mode forward on CPU it raises
"SyncBatchNorm expected input tensor to be on GPU" (``torch/nn/modules/batchnorm.py``). A multi-process CPU (gloo)
run of a network with BatchNorm is therefore refused at start-up in one line, rather than falling back to
per-process BatchNorm statistics, which would be another recipe than the reference's (each process normalising
its own few images) without anyone having asked for it. One process on CPU, or GPUs, train it as the reference does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["has_batchnorms", "use_sync_batchnorm", "wrap_dino_networks"]


def has_batchnorms(model: nn.Module) -> bool:
    """Whether `model` holds a BatchNorm layer (the reference's ``utils.has_batchnorms``)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def use_sync_batchnorm(model: nn.Module, world_size: int, device: torch.device) -> bool:
    """Whether the DINO networks get SyncBatchNorm (and the teacher a DDP wrapper): with BatchNorm in `model` and
    more than one process, as the reference.

    Raises:
        ValueError: BatchNorm in a multi-process run on a device torch's SyncBatchNorm does not support (CPU).
    """
    if world_size <= 1 or not has_batchnorms(model):
        return False
    if device.type != "cuda":
        raise ValueError(
            f"a network with BatchNorm in {world_size} processes needs SyncBatchNorm (SPEC §24, as main_dino.py), "
            f"which torch runs on GPUs only, not on {device.type}: train it in one process on CPU, or on GPUs"
        )
    return True


def wrap_dino_networks(
    student: nn.Module, teacher: nn.Module, world_size: int, device: torch.device, local_rank: int
) -> tuple[nn.Module, nn.Module]:
    """The student and teacher that the forward passes call: unchanged in one process; under torchrun the student in
    DDP, and with BatchNorm both converted to SyncBatchNorm in place and the teacher in DDP too (module docstring).

    The BatchNorm layers are replaced inside `student` and `teacher` (their roots are not BatchNorm layers), keeping
    the parameter objects, so the bare networks stay the ones to optimise, average and save.
    """
    if world_size <= 1:
        return student, teacher
    device_ids = [local_rank] if device.type == "cuda" else None
    if use_sync_batchnorm(student, world_size, device):
        nn.SyncBatchNorm.convert_sync_batchnorm(student)
        nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        # DDP refuses a module with no trainable parameter: the reference wraps the teacher before freezing it.
        frozen = [param for param in teacher.parameters() if not param.requires_grad]
        for param in frozen:
            param.requires_grad = True
        teacher = DistributedDataParallel(teacher, device_ids=device_ids)
        for param in frozen:
            param.requires_grad = False
    return DistributedDataParallel(student, device_ids=device_ids), teacher
