"""One video through the backbone and the propagation: frames in, label maps out (SPEC §11)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from apps.video_seg.preprocess import FramePreprocessing, bgr_to_tensor, downscale_mask, one_hot, target_size
from apps.video_seg.propagation import LabelPropagator, PropagationConfig, labels_from_soft_mask
from dino.features import DEFAULT_MAX_TOKENS, check_token_budget, require_finite
from dino.models.backbone import is_resnet
from dino.runtime import autocast_context

if TYPE_CHECKING:
    from dino.models.backbone import Backbone

__all__ = ["patch_features", "segment_frames"]


@torch.inference_mode()
def patch_features(model: Backbone, frame: Tensor, autocast: torch.dtype | None = None) -> Tensor:
    """One frame's dense features, (h·w, D) float32 in row-major grid order (SPEC §11 Features).

    A ViT gives its last-block patch tokens after the final norm, without [CLS]; a ResNet its
    ``model.grid_layer`` grid (layer3 at stride 16, or layer4 at stride 32), the grid cells standing for the
    patches. `frame` is (3, H, W) on the model's device; one forward per frame, as the reference.
    """
    device = frame.device
    with autocast_context(device, autocast):
        if not is_resnet(model):
            tokens = model.get_intermediate_layers(frame[None], n=1)[0][0, 1:]
        else:
            grid = model.forward_dense(frame[None])[1][0]  # (h, w, C), channels last
            tokens = grid.reshape(-1, grid.shape[-1])
    return require_finite(tokens.float(), "features", autocast)


@torch.inference_mode()
def segment_frames(
    frames: Iterable[np.ndarray],
    first_labels: np.ndarray,
    model: Backbone,
    config: PropagationConfig = PropagationConfig(),
    preprocessing: FramePreprocessing = FramePreprocessing(),
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    name: str = "the video",
) -> Iterator[np.ndarray]:
    """Propagate `first_labels` through a video and yield one label map per frame after the first.

    Args:
        frames: BGR uint8 frames (H, W, 3), as OpenCV decodes them; the first is the annotated one.
        first_labels: Label map (H, W) of the first frame (0 = background, 1..K = objects).
        model: Backbone, already on `device` and in eval mode; a ResNet propagates on its ``grid_layer`` grid,
            whose stride (``model.patch_size``) plays the patch size's part everywhere.
        config: Propagation options.
        preprocessing: Frame resizing and normalisation (adapted to the patch size, see
            :meth:`FramePreprocessing.for_patch`).
        device: Where features and affinities are computed.
        autocast: Backbone autocast dtype, or None for fp32 (the reference).
        max_tokens: Most patch tokens a resized frame may make (None: no limit); a video whose frames would make
            more is refused before the first is resized (a 10000×20 strip would become 240000×480).
        name: How errors name the video (its path).

    Yields:
        Label maps (H, W) uint8 at each frame's original size, frames 1, 2, … in order.

    Raises:
        TokenBudgetError: The frames are over `max_tokens`.
    """
    device = torch.device(device)
    preprocessing = preprocessing.for_patch(model.patch_size)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("the video has no frames")
    if first.shape[:2] != first_labels.shape:
        raise ValueError(f"first-frame mask is {first_labels.shape[::-1]} (w, h) but frames are {first.shape[1::-1]}")
    height, width = first.shape[:2]
    resized = target_size(height, width, preprocessing.short_side, preprocessing.multiple)
    check_token_budget(name, (width, height), resized, model.patch_size, max_tokens)
    features = patch_features(model, bgr_to_tensor(first, preprocessing).to(device), autocast)
    small = downscale_mask(first_labels, model.patch_size, preprocessing)
    propagator = LabelPropagator(features, one_hot(small).to(device), config)
    for frame in iterator:
        features = patch_features(model, bgr_to_tensor(frame, preprocessing).to(device), autocast)
        soft = propagator.step(features)
        yield labels_from_soft_mask(soft, model.patch_size, frame.shape[:2], config.minmax_norm)
