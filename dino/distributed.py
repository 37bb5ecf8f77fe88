"""Process-group set-up for one process or ``torchrun`` (SPEC §6), and collectives that degrade to no-ops.

The same command runs alone or under ``torchrun --nproc_per_node=N`` (and multi-node through torchrun's
rendezvous): torchrun exports ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, and we initialise from those
(``env://``) with NCCL on GPUs and gloo on CPU. Without them we run single-process with no process group,
unlike the reference, which refuses to train without a GPU launcher (SPEC §17.4).

Shared by training (:mod:`dino.train`), k-NN feature extraction (:mod:`dino.eval.knn`) and index sharding
(:mod:`apps.retrieval.indexing`), hence a top-level module rather than a part of training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dino.runtime import pick_device

__all__ = [
    "DistributedContext",
    "all_gather_cat",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: its rank, the world size, and the device it should use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistributedContext:
    """Initialise the default process group when launched by torchrun; otherwise a single-process context.

    Args:
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``. Under torchrun each process
            takes GPU ``LOCAL_RANK``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
        torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        return DistributedContext(rank, world_size, local_rank, torch_device)
    torch_device = torch.device("cuda" if use_cuda else "cpu") if device == "auto" else pick_device(device)
    return DistributedContext(0, 1, 0, torch_device)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if _active() else 0


def get_world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` in place over all ranks (a no-op in a single process); returns it."""
    if _active():
        dist.all_reduce(tensor)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order (`tensor` itself in a single process).

    No gradient flows through it (``dist.all_gather`` has none): it serves keys, queues and batch shuffles, as
    MoCo's and DenseCL's ``concat_all_gather``. Every rank must pass the same shape.
    """
    if not _active():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` in place with rank `src`'s (a no-op in a single process); returns it."""
    if _active():
        dist.broadcast(tensor, src=src)
    return tensor
