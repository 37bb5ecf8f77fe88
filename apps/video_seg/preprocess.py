"""Frame and first-frame-mask preprocessing of the DAVIS protocol (SPEC §11).

Frames and masks share ONE size computation (:func:`target_size`). The reference computes the two
separately and, for square inputs, sends them down different branches (frame 448w×480h, mask 480w×448h);
that mismatch is fixed here on purpose (SPEC §11 [QUIRK], issue 5).

Sizes and the patch grid: the reference's rule (short side 480, long side floored to a multiple of 64) gives
whole patches for patch 8 and 16. For any other patch size p (DINOv2's 14) :meth:`FramePreprocessing.for_patch`
rounds the short side to whole patches and floors the long side to a multiple of p (854×480 → 840×476, a 60×34
grid), so that no pixel falls outside the grid and the upsampled labels cover the frame exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dino.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "REFERENCE_STD",
    "FramePreprocessing",
    "bgr_to_tensor",
    "downscale_mask",
    "one_hot",
    "read_bgr",
    "read_frame",
    "target_size",
]

# SPEC §11: the short side is resized to 480 and the long side floored to a multiple of 64.
SHORT_SIDE = 480
SIDE_MULTIPLE = 64
# SPEC §11 [QUIRK]: the reference normalises with std 0.228 (a typo for ImageNet's 0.229).
REFERENCE_STD = (0.228, 0.224, 0.225)


@dataclass(frozen=True)
class FramePreprocessing:
    """How frames are resized and normalised.

    Attributes:
        short_side: Target length of the short side in pixels.
        multiple: The long side is floored to a multiple of this (the frame is squashed, not cropped).
        reference_std: Normalise with the reference's std (0.228, 0.224, 0.225) instead of ImageNet's.
    """

    short_side: int = SHORT_SIDE
    multiple: int = SIDE_MULTIPLE
    reference_std: bool = True

    @property
    def std(self) -> tuple[float, float, float]:
        return REFERENCE_STD if self.reference_std else IMAGENET_STD

    def for_patch(self, patch_size: int) -> FramePreprocessing:
        """These settings for a backbone of `patch_size`: unchanged when both sides come out in whole patches
        (8 and 16 with the reference's 480 and 64); otherwise the short side rounded to whole patches and the
        long side floored to a multiple of the patch (14: 476, and 840 for a 854×480 frame)."""
        if self.short_side % patch_size == 0 and self.multiple % patch_size == 0:
            return self
        short_side = max(patch_size, round(self.short_side / patch_size) * patch_size)
        return replace(self, short_side=short_side, multiple=patch_size)


def target_size(
    height: int, width: int, short_side: int = SHORT_SIDE, multiple: int = SIDE_MULTIPLE
) -> tuple[int, int]:
    """The (height, width) a frame or mask of `height`×`width` pixels is resized to (SPEC §11 `read_frame`).

    Landscape and square inputs get height = `short_side`; portrait inputs get width = `short_side`. The
    other side is ``int(((short_side · long / short) // multiple) · multiple)``, in floats as in the reference.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if height > width:
        new_height = int(((short_side * height / width) // multiple) * multiple)
        new_width = short_side
    else:
        new_height = short_side
        new_width = int(((short_side * width / height) // multiple) * multiple)
    if new_height == 0 or new_width == 0:
        raise ValueError(f"a {width}x{height} frame is too elongated: its long side floors to 0 pixels")
    return new_height, new_width


def bgr_to_tensor(bgr: np.ndarray, preprocessing: FramePreprocessing = FramePreprocessing()) -> Tensor:
    """Resize an OpenCV BGR uint8 frame (H, W, 3) and normalise it to a (3, th, tw) float tensor.

    Follows the reference operation by operation (bilinear ``cv2.resize``, /255, BGR→RGB, then an
    in-place subtract and divide per channel) so that the input pixels are bit-identical.
    """
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"expected a BGR frame (H, W, 3), got shape {bgr.shape}")
    height, width = target_size(bgr.shape[0], bgr.shape[1], preprocessing.short_side, preprocessing.multiple)
    resized = cv2.resize(bgr, (width, height)).astype(np.float32) / 255.0
    tensor = torch.from_numpy(np.transpose(resized[:, :, ::-1].copy(), (2, 0, 1))).float()
    for channel, mean, std in zip(tensor, IMAGENET_MEAN, preprocessing.std, strict=True):
        channel.sub_(mean)
        channel.div_(std)
    return tensor


def read_bgr(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file decoded by OpenCV, (H, W, 3) uint8 BGR, as the reference reads frames.

    Raises:
        FileNotFoundError: OpenCV cannot read the file.
    """
    bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{path}: not a readable image")
    return bgr


def read_frame(path: str | os.PathLike[str], preprocessing: FramePreprocessing = FramePreprocessing()) -> Tensor:
    """Read an image file with OpenCV and preprocess it (see :func:`bgr_to_tensor`).

    Raises:
        FileNotFoundError: OpenCV cannot read the file.
    """
    return bgr_to_tensor(read_bgr(path), preprocessing)


def downscale_mask(
    labels: np.ndarray, patch_size: int, preprocessing: FramePreprocessing = FramePreprocessing()
) -> np.ndarray:
    """Resize a label map (H, W) to the patch grid of its frame with PIL nearest (SPEC §11 `read_seg`)."""
    height, width = target_size(labels.shape[0], labels.shape[1], preprocessing.short_side, preprocessing.multiple)
    image = Image.fromarray(labels.astype(np.uint8))
    return np.array(image.resize((width // patch_size, height // patch_size), Image.Resampling.NEAREST))


def one_hot(labels: np.ndarray) -> Tensor:
    """One channel per label 0..max(labels): (C, h, w) float32, C = max + 1 as in the reference."""
    indices = torch.from_numpy(labels.astype(np.int64))
    return torch.nn.functional.one_hot(indices, int(indices.max()) + 1).permute(2, 0, 1).float()
