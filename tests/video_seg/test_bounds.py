"""Work a video can cause is bounded, and non-finite features are refused (#19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.video_seg.pipeline import segment_frames
from dino.checkpoint import load_backbone
from dino.features import NonFiniteOutputError, TokenBudgetError


def test_a_strip_video_is_refused_before_its_first_frame_is_resized(monkeypatch) -> None:
    import apps.video_seg.pipeline as pipeline

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("a frame was resized before the budget refused the video")

    monkeypatch.setattr(pipeline, "bgr_to_tensor", no_preprocessing)
    frames = [np.zeros((20, 10000, 3), dtype=np.uint8)] * 2
    labels = np.zeros((20, 10000), dtype=np.uint8)
    labels[:, :10] = 1
    model = load_backbone("random:vit_tiny/16")
    # Short side 480: the long side becomes 240000 (floored to a multiple of 64), a 30×15000 grid.
    with pytest.raises(TokenBudgetError, match=r"strip\.mp4: 10000×20 pixels become 240000×480 .*450,000 patch"):
        next(segment_frames(frames, labels, model, name="strip.mp4"))


def test_the_budget_counts_the_resized_frame_exactly() -> None:
    frames = [np.zeros((48, 80, 3), dtype=np.uint8)] * 2
    labels = np.zeros((48, 80), dtype=np.uint8)
    labels[10:30, 20:50] = 1
    model = load_backbone("random:vit_tiny/16")
    # Short side 480, long side 800 floored to a multiple of 64: 480×768, a 30×48 grid of 16-pixel patches.
    assert next(segment_frames(frames, labels, model, max_tokens=30 * 48)).shape == (48, 80)
    with pytest.raises(TokenBudgetError, match="1,440 patch tokens"):
        next(segment_frames(frames, labels, model, max_tokens=30 * 48 - 1))


def test_non_finite_features_are_refused() -> None:
    frames = [np.full((32, 48, 3), 90, dtype=np.uint8)] * 2
    labels = np.zeros((32, 48), dtype=np.uint8)
    labels[:16, :16] = 1
    model = load_backbone("random:vit_tiny/16")
    with torch.no_grad():
        model.norm.weight.fill_(3e38)
    with pytest.raises(NonFiniteOutputError, match="features hold NaN or infinite values"):
        next(segment_frames(frames, labels, model))
