"""Multi-crop augmentation shapes and seeding (SPEC §4)."""

from __future__ import annotations

import torch

from dino.data.multicrop import DataAugmentationDINO, MultiCropDataset
from dino.data.samplers import EpochBatchSampler


def test_crop_counts_and_sizes(image_folder) -> None:
    augmentation = DataAugmentationDINO(local_crops_number=3, global_crops_size=32, local_crops_size=16)
    crops = MultiCropDataset(image_folder, augmentation)[(0, 0)]
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3


def test_augmentation_is_a_function_of_seed_rank_epoch_index(image_folder) -> None:
    augmentation = DataAugmentationDINO(local_crops_number=1, global_crops_size=32, local_crops_size=16)
    rank0 = MultiCropDataset(image_folder, augmentation, seed=0, rank=0)
    rank1 = MultiCropDataset(image_folder, augmentation, seed=0, rank=1)
    state = torch.get_rng_state()
    first = rank0[(0, 3)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(first, rank0[(0, 3)], strict=True))
    assert not torch.equal(first[0], rank1[(0, 3)][0])
    assert not torch.equal(first[0], rank0[(1, 3)][0])


def test_sampler_shards_like_distributed_sampler_and_resumes_mid_epoch() -> None:
    shards = [EpochBatchSampler(10, 2, rank=r, world_size=2, seed=0) for r in range(2)]
    for shard in shards:
        shard.set_epoch(1)
    generator = torch.Generator()
    generator.manual_seed(1)
    permutation = torch.randperm(10, generator=generator).tolist()
    batches = [list(s) for s in shards]
    assert [i for b in batches[0] for _, i in b] == permutation[0:8:2]
    assert all(epoch == 1 for b in batches[1] for epoch, _ in b)
    shards[0].set_epoch(1, start_batch=1)
    assert list(shards[0]) == batches[0][1:]
