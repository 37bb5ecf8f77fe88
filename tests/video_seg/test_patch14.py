"""Frame sizes for patch sizes the reference's rule (480, multiples of 64) does not divide: DINOv2's 14."""

from __future__ import annotations

import numpy as np
import pytest

from apps.video_seg.pipeline import segment_frames
from apps.video_seg.preprocess import FramePreprocessing, bgr_to_tensor, target_size
from dino.checkpoint import load_backbone


@pytest.mark.parametrize("patch_size", [8, 16])
def test_reference_rule_is_kept_for_8_and_16(patch_size: int) -> None:
    assert FramePreprocessing().for_patch(patch_size) == FramePreprocessing()


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(480, 854, (476, 840)), (1080, 1920, (476, 840)), (1080, 720, (714, 476)), (500, 500, (476, 476))],
)
def test_patch_14_sizes_are_whole_patches(height: int, width: int, expected: tuple[int, int]) -> None:
    rule = FramePreprocessing().for_patch(14)
    assert (rule.short_side, rule.multiple) == (476, 14)  # 34 patches: the nearest whole count to 480 px
    size = target_size(height, width, rule.short_side, rule.multiple)
    # 854·476/480 = 846.9 floors to 840 = 60 patches; a portrait 1080·476/720 = 714 = 51 patches exactly.
    assert size == expected and size[0] % 14 == 0 and size[1] % 14 == 0


def test_propagation_with_a_registers_backbone_returns_frame_sized_labels() -> None:
    model = load_backbone("random:dinov2_vits14_reg")
    rule = FramePreprocessing(short_side=56).for_patch(14)
    frame = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    assert tuple(bgr_to_tensor(frame, rule).shape) == (3, 56, 84)
    first = np.zeros((60, 90), dtype=np.uint8)
    first[20:40, 30:60] = 1
    labels = list(segment_frames([frame, frame], first, model, preprocessing=FramePreprocessing(short_side=56)))
    assert len(labels) == 1 and labels[0].shape == (60, 90)
    # The same frame again: its labels come back where they were.
    assert (labels[0][25:35, 35:55] == 1).all() and labels[0][0, 0] == 0
