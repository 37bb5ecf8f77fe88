"""A distributed, resumable batch sampler (SPEC §6: DistributedSampler + ``set_epoch`` + ``drop_last``)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochBatchSampler"]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys: this rank's shard of an epoch-seeded permutation.

    The permutation and sharding are those of ``torch.utils.data.DistributedSampler(shuffle=True)``
    (``randperm`` seeded with ``seed + epoch``, padded to a multiple of the world size, every
    `world_size`-th index from `rank`); incomplete batches are dropped as in the reference DataLoader.
    :meth:`set_epoch` also takes the number of batches already consumed, so a resumed run continues
    mid-epoch from exactly the next batch.

    Args:
        dataset_size: Number of samples.
        batch_size: Samples per batch on this rank.
        rank: This process's rank.
        world_size: Number of processes.
        seed: Shuffling seed, shared by all ranks.
        shuffle: Shuffle each epoch.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_samples = math.ceil(dataset_size / world_size)
        if self.num_samples < batch_size:
            raise ValueError(
                f"{dataset_size} images give {self.num_samples} per process, fewer than one batch of {batch_size}; "
                "lower batch_size_per_gpu or add images"
            )
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and skip its first `start_batch` batches."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        """Batches per (full) epoch."""
        return self.num_samples // self.batch_size

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            indices = list(range(self.dataset_size))
        total = self.num_samples * self.world_size
        padding = total - len(indices)
        indices += (indices * math.ceil(padding / len(indices)))[:padding]
        return indices[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self._indices()
        for batch in range(self.start_batch, len(self)):
            chunk = indices[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield [(self.epoch, index) for index in chunk]
