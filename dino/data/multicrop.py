"""DINO's multi-crop augmentation (SPEC §4) and a dataset whose augmentations are reproducible per sample.

:class:`DataAugmentationDINO` is the reference transform: two global crops (blur p=1.0; blur p=0.1 and
solarize p=0.2) and N local crops (blur p=0.5), each RandomResizedCrop (bicubic) -> flip / colour jitter /
grayscale -> blur (/ solarize) -> ImageNet normalisation. Like the reference it draws from torch's global
RNG (torchvision ops) and Python's `random` (blur, solarize).

:class:`MultiCropDataset` fixes what the reference leaves unseeded (SPEC §15.8): every item's augmentation
RNG is seeded from ``(seed, rank, epoch, index)``, so each rank sees different crops, a run is reproducible
from its seed whatever the number of DataLoader workers, and a resumed run sees the same crops as an
uninterrupted one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from dino.data.io import list_images, open_image
from dino.data.transforms import normalize

__all__ = ["DataAugmentationDINO", "GaussianBlur", "MultiCropDataset", "Solarization", "sample_seed", "seeded_rng"]

# SPEC §4 constants.
GLOBAL_CROPS_SIZE = 224
LOCAL_CROPS_SIZE = 96
GLOBAL1_BLUR_P = 1.0
GLOBAL2_BLUR_P = 0.1
GLOBAL2_SOLARIZE_P = 0.2
LOCAL_BLUR_P = 0.5
BLUR_RADIUS = (0.1, 2.0)


class GaussianBlur:
    """PIL Gaussian blur with radius ~ U(0.1, 2.0), applied when ``random.random() <= p`` (as the reference)."""

    def __init__(self, p: float = 0.5, radius_min: float = BLUR_RADIUS[0], radius_max: float = BLUR_RADIUS[1]) -> None:
        self.prob = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if not random.random() <= self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """PIL solarize (threshold 128), applied when ``random.random() < p``."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class DataAugmentationDINO:
    """PIL image -> ``[global1, global2, local1, …, localN]`` normalised tensors.

    Args:
        global_crops_scale: RandomResizedCrop scale range of the global crops.
        local_crops_scale: RandomResizedCrop scale range of the local crops.
        local_crops_number: Number of local crops N (0 disables multi-crop).
        global_crops_size: Side of the global crops (224 in the paper).
        local_crops_size: Side of the local crops (96 in the paper).
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float] = (0.4, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.4),
        local_crops_number: int = 8,
        global_crops_size: int = GLOBAL_CROPS_SIZE,
        local_crops_size: int = LOCAL_CROPS_SIZE,
    ) -> None:
        flip_and_color_jitter = T.Compose(
            [
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )
        bicubic = InterpolationMode.BICUBIC
        self.global_transfo1 = T.Compose(
            [
                T.RandomResizedCrop(global_crops_size, scale=tuple(global_crops_scale), interpolation=bicubic),
                flip_and_color_jitter,
                GaussianBlur(GLOBAL1_BLUR_P),
                normalize(),
            ]
        )
        self.global_transfo2 = T.Compose(
            [
                T.RandomResizedCrop(global_crops_size, scale=tuple(global_crops_scale), interpolation=bicubic),
                flip_and_color_jitter,
                GaussianBlur(GLOBAL2_BLUR_P),
                Solarization(GLOBAL2_SOLARIZE_P),
                normalize(),
            ]
        )
        self.local_crops_number = local_crops_number
        self.local_transfo = T.Compose(
            [
                T.RandomResizedCrop(local_crops_size, scale=tuple(local_crops_scale), interpolation=bicubic),
                flip_and_color_jitter,
                GaussianBlur(LOCAL_BLUR_P),
                normalize(),
            ]
        )

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops_number

    def __call__(self, image: Image.Image) -> list[Tensor]:
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops.extend(self.local_transfo(image) for _ in range(self.local_crops_number))
        return crops


def sample_seed(seed: int, rank: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a function of (seed, rank, epoch, index) only, well mixed by SeedSequence."""
    state = np.random.SeedSequence([seed, rank, epoch, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG and Python's `random` inside the block, restoring both afterwards so the
    caller's random streams are untouched."""
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class MultiCropDataset(Dataset):
    """Images of one or more folders (searched recursively; labels ignored), augmented reproducibly.

    Items are addressed by ``(epoch, index)`` keys (see :class:`dino.data.samplers.EpochBatchSampler`)
    so that the augmentation seed is known inside worker processes without shared state.

    Args:
        roots: Image folders or files.
        transform: PIL image -> list of views: :class:`DataAugmentationDINO` (DINO's multi-crop) or
            :class:`dino.data.twoview.MoCoV2Augmentation` (DenseCL's two views).
        seed: Run seed.
        rank: Rank of this process; ranks get different augmentations.
    """

    def __init__(
        self,
        roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        transform: Callable[[Image.Image], list[Tensor]],
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        self.paths = list_images(roots, required=True)
        self.transform = transform
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> list[Tensor]:
        epoch, index = key
        image = open_image(self.paths[index])
        with seeded_rng(sample_seed(self.seed, self.rank, epoch, index)):
            return self.transform(image)
