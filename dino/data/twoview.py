"""MoCo-v2's two-view augmentation, as DenseCL trains with it (SPEC §23, the ``train_pipeline`` of
``configs/selfsup/densecl/densecl_imagenet_200ep.py`` in WXinlong/DenseCL).

Each view, drawn independently from the same image: RandomResizedCrop(size, scale) with bilinear resampling
(torchvision's default of 2020, which OpenSelfSup used) -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8 ->
RandomGrayscale(0.2) -> Gaussian blur with PIL radius σ ~ U(0.1, 2.0) and p = 0.5 -> horizontal flip ->
ImageNet normalisation. OpenSelfSup's ``ContrastiveDataset`` runs the pipeline twice and stacks the results as
``img[:, 0]`` (the query view) and ``img[:, 1]`` (the key view); here the two views are a list, query first.

One deliberate difference: OpenSelfSup's ``GaussianBlur`` draws σ from NumPy's global RNG and applies itself
through torchvision's ``RandomApply`` (torch's RNG). We reuse :class:`dino.data.multicrop.GaussianBlur`, which
draws both the coin and σ from Python's ``random``: the same distribution (PIL radius = σ, as the reference),
but from an RNG that :class:`~dino.data.multicrop.MultiCropDataset` seeds per sample, so augmentations are
reproducible and a resumed run sees the same views. NumPy's RNG is seeded by nobody there.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from dino.data.multicrop import BLUR_RADIUS, GaussianBlur
from dino.data.transforms import normalize

__all__ = ["MOCO_BLUR_P", "MoCoV2Augmentation"]

# SPEC §23: MoCo-v2's blur probability (the radius range is DINO's, BLUR_RADIUS = (0.1, 2.0), the same).
MOCO_BLUR_P = 0.5


class MoCoV2Augmentation:
    """PIL image -> ``[view_q, view_k]``, two independently augmented, normalised (3, size, size) tensors.

    It draws only from torch's global RNG (torchvision ops) and Python's ``random`` (blur), the two streams
    :class:`~dino.data.multicrop.MultiCropDataset` seeds per sample, so it plugs into that dataset as
    :class:`~dino.data.multicrop.DataAugmentationDINO` does (with ``ncrops`` = 2).

    Args:
        size: Side of the crops (224 in the paper).
        scale: RandomResizedCrop's range of the crop's area, as a fraction of the image's ((0.2, 1.0) in MoCo-v2).
    """

    def __init__(self, size: int = 224, scale: Sequence[float] = (0.2, 1.0)) -> None:
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}")
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.view_transform = T.Compose(
            [
                T.RandomResizedCrop(size, scale=self.scale, interpolation=InterpolationMode.BILINEAR),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                GaussianBlur(MOCO_BLUR_P, *BLUR_RADIUS),
                T.RandomHorizontalFlip(p=0.5),
                normalize(),
            ]
        )

    @property
    def ncrops(self) -> int:
        """Views per image: the trainer reads it as it reads DataAugmentationDINO's."""
        return 2

    def __call__(self, image: Image.Image) -> list[Tensor]:
        return [self.view_transform(image), self.view_transform(image)]
