"""VOC and DAVIS readers, and the whole evaluation on a VOC-layout folder built in the test."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from apps.segmentation.evaluate import evaluate_masks, labels_at_input_resolution, write_results
from apps.segmentation.voc import davis_samples, read_labels, voc_samples
from dino.checkpoint import load_backbone
from dino.data.masks import write_indexed_png
from dino.runtime import Runtime


def test_voc_reader_keeps_ids_and_void(voc_root, voc_labels) -> None:
    samples = voc_samples(voc_root, "val", "object")
    assert [s.name for s in samples] == ["2007_000001", "2007_000002"]
    labels = read_labels(samples[0])
    np.testing.assert_array_equal(labels, voc_labels["2007_000001"])
    assert set(np.unique(labels)) == {0, 1, 2, 255}
    classes = read_labels(voc_samples(voc_root, "val", "class")[0])
    assert set(np.unique(classes)) == {0, 15, 255}


def test_voc_reader_errors_name_the_file(voc_root) -> None:
    with pytest.raises(FileNotFoundError, match="train.txt"):
        voc_samples(voc_root, "train")
    (voc_root / "SegmentationObject" / "2007_000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000002.png"):
        voc_samples(voc_root)


def test_davis_reader_every_nth_frame_foreground(tmp_path) -> None:
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("seq\n")
    for index in range(7):
        frame = tmp_path / "JPEGImages" / "480p" / "seq" / f"{index:05d}.jpg"
        frame.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 16)).save(frame)
        write_indexed_png(tmp_path / "Annotations" / "480p" / "seq" / f"{index:05d}.png", np.full((16, 32), 2))
    samples = davis_samples(tmp_path, every=5)
    assert [s.name for s in samples] == ["seq/00000", "seq/00005"]
    assert np.unique(read_labels(samples[1])).tolist() == [1]


def test_labels_resized_like_the_image() -> None:
    labels = np.array([[1, 2], [3, 255]], dtype=np.uint8)
    square = labels_at_input_resolution(labels, 4, keep_aspect=False, shape=(4, 4))
    np.testing.assert_array_equal(square, np.kron(labels, np.ones((2, 2), dtype=np.uint8)))
    wide = np.zeros((10, 20), dtype=np.uint8)
    assert labels_at_input_resolution(wide, 5, keep_aspect=True, shape=(5, 8)).shape == (5, 8)


@pytest.mark.slow
@pytest.mark.parametrize("void", ["count", "ignore"])
@pytest.mark.parametrize("resolution", ["photo", "input"])
def test_whole_masks_score_object_area_over_image_area(voc_root, voc_labels, voc_size, void, resolution) -> None:
    # threshold 1.0 keeps every patch, so every head's mask is the whole image and each object's best IoU is
    # its area over the image area (void count) or over the non-void area (void ignore): computed by hand.
    model = load_backbone("random:vit_tiny/16")
    result = evaluate_masks(
        model,
        voc_samples(voc_root),
        method="attention",
        threshold=1.0,
        size=voc_size,
        keep_aspect=False,
        resolution=resolution,
        void=void,
        runtime=Runtime(device="cpu", dtype="fp32", progress=False),
    )
    expected_images = []
    for labels in voc_labels.values():
        denominator = labels.size if void == "count" else np.count_nonzero(labels != 255)
        ids = [i for i in np.unique(labels) if i not in (0, 255)]
        expected_images.append(np.mean([np.count_nonzero(labels == i) / denominator for i in ids]))
    assert result.jaccard == pytest.approx(np.mean(expected_images))
    assert [row["jaccard"] for row in result.rows] == pytest.approx(expected_images)
    assert result.images == 2 and result.objects == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "heads", "masks_per_image"), [("attention", "best", 3), ("ncut", "best", 1), ("diffusion", "best", 1)]
)
def test_evaluation_end_to_end_writes_results(voc_root, voc_size, tmp_path, method, heads, masks_per_image) -> None:
    model = load_backbone("random:vit_tiny/16")
    result = evaluate_masks(
        model,
        voc_samples(voc_root),
        method=method,
        heads=heads,
        size=voc_size,
        runtime=Runtime(device="cpu", dtype="fp32", batch_size=2, progress=False),
        protocol={"dataset": "voc", "split": "val"},
    )
    summary_path, rows_path = write_results(result, tmp_path / "out")
    summary = json.loads(summary_path.read_text())
    assert summary["jaccard"] == pytest.approx(result.jaccard) and 0 <= result.jaccard <= 1
    assert summary["protocol"]["method"] == method and summary["protocol"]["dataset"] == "voc"
    assert summary["protocol"]["void"] == "count" and summary["protocol"]["size"] == voc_size
    rows = list(csv.DictReader(rows_path.open()))
    assert [row["name"] for row in rows] == ["2007_000001", "2007_000002"]
    assert np.mean([float(row["jaccard"]) for row in rows]) == pytest.approx(result.jaccard)
    best = [int(i) for row in rows for i in row["best_masks"].split()]
    assert all(0 <= i < masks_per_image for i in best) and (method != "attention") == (not best)
