"""Each propagation step on small hand-checked tensors, and a synthetic moving object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from apps.video_seg.propagation import (
    LabelPropagator,
    PropagationConfig,
    joint_topk_threshold,
    labels_from_soft_mask,
    minmax_normalise,
    neighbourhood_mask,
    propagate_labels,
)
from dino.data.masks import mask_iou


@pytest.mark.parametrize(("height", "width", "radius"), [(5, 7, 1), (6, 4, 2), (3, 3, 12)])
def test_neighbourhood_mask_equals_the_reference_loop(reference, height: int, width: int, radius: int) -> None:
    index = torch.arange(height * width)
    ours = neighbourhood_mask(index, index, width, radius)
    expected = reference.restrict_neighborhood(height, width, radius)
    assert torch.equal(ours.float(), expected)
    # Any subset of rows/columns is the matching block of the full mask (what the chunks use).
    assert torch.equal(neighbourhood_mask(index[3:9], index[1:20], width, radius), ours[3:9, 1:20])


def test_topk_is_joint_over_context_frames() -> None:
    # Two context frames, one target; the 3 largest values overall are 9, 8 (frame 0) and 7 (frame 1).
    affinity = torch.tensor([[[9.0, 8.0, 1.0]], [[7.0, 2.0, 3.0]]])
    assert joint_topk_threshold(affinity, 3).tolist() == [7.0]
    assert joint_topk_threshold(affinity, 1).tolist() == [9.0]
    # Fewer entries than k: keep everything.
    assert joint_topk_threshold(affinity, 7).tolist() == [0.0]


def test_column_normalisation_and_label_mixing_by_hand() -> None:
    # Frames of 1x2 patches with 1-D features; two context frames; radius 0 = no restriction.
    target = torch.tensor([[1.0], [-1.0]])
    sources = torch.tensor([[[1.0, -1.0]], [[1.0, 1.0]]])  # (n_ctx, D, hw), already unit norm
    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])  # (n_ctx, C=2, hw)
    config = PropagationConfig(topk=3, radius=0, temperature=1.0)
    soft = propagate_labels(target, sources, labels, (1, 2), config)
    e = np.e
    # Target 0: weights e, 1/e (frame 0), e, e (frame 1); top-3 keeps the three e's, 1/3 each.
    # Channel 0 gets frame 0 patch 0; channel 1 gets frame 1 patches 0 and 1.
    assert soft[:, 0].tolist() == pytest.approx([1 / 3, 2 / 3])
    # Target 1: weights 1/e, e (frame 0), 1/e, 1/e (frame 1); the 3rd largest (1/e) is tied three ways,
    # so all four are kept, as in the reference.
    total = e + 3 / e
    assert soft[:, 1].tolist() == pytest.approx([(1 / e) / total, (e + 2 / e) / total])
    assert soft.sum(0).tolist() == pytest.approx([1.0, 1.0])


def test_minmax_normalisation_by_hand() -> None:
    mask = torch.tensor([[[0.2, 0.4], [0.6, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    out = minmax_normalise(mask.clone())
    assert out[0].flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert out[1].eq(0).all()  # max 0: left alone
    assert out[2].isnan().all()  # constant positive channel: 0/0, as the reference


def test_minmax_changes_the_argmax_as_in_the_reference() -> None:
    # Background 0.6..0.7, object 0.3..0.4: without min-max everything is background; with it, the
    # object wins where it is at its own maximum.
    soft = torch.tensor([[[0.7, 0.6]], [[0.3, 0.4]]])
    with_norm = labels_from_soft_mask(soft, 1, (1, 2), minmax_norm=True)
    without = labels_from_soft_mask(soft, 1, (1, 2), minmax_norm=False)
    assert without.tolist() == [[0, 0]]
    assert with_norm.tolist() == [[0, 1]]


def _moving_square_video(frames: int, step: int, size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A textured square (a crop of skimage's astronaut) sliding right over the coffee photo."""
    background = data.coffee()[:192, :320].astype(np.float32)
    texture = data.astronaut()[100 : 100 + size, 180 : 180 + size].astype(np.float32)
    images, masks = [], []
    for t in range(frames):
        image, mask = background.copy(), np.zeros(background.shape[:2], np.uint8)
        top, left = 64, 32 + step * t
        image[top : top + size, left : left + size] = texture
        mask[top : top + size, left : left + size] = 1
        images.append(image)
        masks.append(mask)
    return images, masks


def _colour_features(image: np.ndarray, patch: int) -> torch.Tensor:
    """Hand-built patch features: the mean and standard deviation of each colour channel of a patch,
    centred per frame. They separate the astronaut crop from the coffee background without any learning."""
    h, w = image.shape[0] // patch, image.shape[1] // patch
    patches = torch.from_numpy(image[: h * patch, : w * patch]).reshape(h, patch, w, patch, 3)
    patches = patches.permute(0, 2, 1, 3, 4).reshape(h * w, patch * patch, 3)
    features = torch.cat([patches.mean(1), patches.std(1)], dim=1)
    return features - features.mean(0)


def test_propagated_mask_follows_a_moving_object() -> None:
    """The mask must follow a square moving 8 px (half a patch) per frame for 12 frames (96 px).

    A random-init ViT cannot be relied on to separate object from background, so the propagation
    (context, neighbourhood, top-k, normalisation, upsampling, min-max, argmax) is tested on explicit
    colour-statistics features. Bound: labels live on a 16-px patch grid, so the predicted square's edges can
    be off by up to half a patch (8 px) on each side; a 64-px square shifted by 8 px in x and y still has
    IoU (56·56)/(2·64² − 56·56) ≈ 0.62. We require J > 0.6 on every frame; a mask left at the first position
    would fall to IoU 0 after 8 frames.
    """
    patch = 16
    images, masks = _moving_square_video(frames=13, step=8)
    first_small = torch.from_numpy(masks[0][::patch, ::patch].astype(np.int64))
    one_hot = torch.nn.functional.one_hot(first_small, 2).permute(2, 0, 1).float()
    propagator = LabelPropagator(_colour_features(images[0], patch), one_hot, PropagationConfig(radius=3))
    for t in range(1, len(images)):
        soft = propagator.step(_colour_features(images[t], patch))
        labels = labels_from_soft_mask(soft, patch, masks[t].shape)
        assert mask_iou(masks[t], labels == 1) > 0.6, f"frame {t}"
    assert mask_iou(masks[0], masks[-1]) == 0.0  # the object has left its first position entirely
