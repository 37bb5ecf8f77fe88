"""The chunked, memory-bounded propagation gives the reference's masks on real DAVIS frames.

The baseline is bench/video_seg_reference.py, an operation-by-operation port of the reference script.
Backbone: seeded random-init ViT-S/16 (no trained weights can be downloaded here). Random features still
give a non-trivial propagation (the masks change from frame to frame), which is all an equivalence test
needs: both implementations must turn the same features into the same masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.video_seg.davis import read_bgr_frames
from apps.video_seg.pipeline import segment_frames
from apps.video_seg.preprocess import downscale_mask, read_frame, target_size
from apps.video_seg.propagation import PropagationConfig
from dino.checkpoint import load_backbone
from dino.data.davis import davis_annotations, davis_frames
from dino.data.masks import read_indexed_png

SEQUENCE = "car-shadow"
FRAMES = 8


def test_preprocessing_is_bit_identical(shared_data, reference) -> None:
    frame = davis_frames(shared_data / "davis2016-dev", SEQUENCE)[0]
    annotation = davis_annotations(shared_data / "davis2016-dev", SEQUENCE)[0]
    expected, height, width = reference.read_frame(frame)
    assert torch.equal(read_frame(frame), expected)
    assert (height, width) == (480, 854) and expected.shape == (3, 480, 832)
    expected_seg, _ = reference.read_seg(annotation, 16)
    small = downscale_mask(read_indexed_png(annotation), 16)
    assert small.shape == (30, 52)
    assert torch.equal(torch.from_numpy(small).float(), expected_seg[0].argmax(0).float())


def test_square_frames_and_masks_share_one_size() -> None:
    # The reference sends a square frame to 480h x 448w but its mask to 448h x 480w; one rule here.
    assert target_size(500, 500) == (480, 448)
    assert target_size(480, 854) == (480, 832)
    assert target_size(1152, 480) == (1152, 480)


_REFERENCE_RUNS: dict[str, tuple] = {}


@pytest.fixture
def reference_run(shared_data, reference, cached_backbone):
    """The reference port on the first frames of a real sequence (computed once), with a backbone that
    caches features so that the pipeline under test reuses them."""
    key = str(shared_data)
    if key not in _REFERENCE_RUNS:
        frames = davis_frames(shared_data / "davis2016-dev", SEQUENCE)[:FRAMES]
        annotation = davis_annotations(shared_data / "davis2016-dev", SEQUENCE)[0]
        model = cached_backbone(load_backbone("random:vit_small/16"))
        expected, _ = reference.segment_sequence(model, frames, annotation)
        _REFERENCE_RUNS[key] = frames, annotation, model, expected
    return _REFERENCE_RUNS[key]


@pytest.mark.slow
@pytest.mark.parametrize("max_affinity_mb", [512.0, 0.5])
def test_masks_equal_the_reference_on_davis_frames(reference_run, max_affinity_mb: float) -> None:
    frames, annotation, model, expected = reference_run
    misses = model.misses
    config = PropagationConfig(max_affinity_mb=max_affinity_mb)  # 0.5 MiB: 1-2 grid rows per chunk
    ours = list(segment_frames(read_bgr_frames(frames), read_indexed_png(annotation), model, config))
    assert model.misses == misses, "the two pipelines fed the backbone different pixels"
    assert len(ours) == FRAMES - 1
    for index, (mine, theirs) in enumerate(zip(ours, expected[1:], strict=True), 1):
        assert mine.shape == theirs.shape == (480, 854)
        assert np.array_equal(mine, theirs), f"frame {index}: {np.mean(mine != theirs):.2e} of pixels differ"
    # The propagation really moves labels around (otherwise this test would prove little).
    assert len({mask.tobytes() for mask in ours}) > 1
