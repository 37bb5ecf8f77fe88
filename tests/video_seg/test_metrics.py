"""J and F: hand-checked small cases, and agreement with vos-benchmark on real DAVIS annotations."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from apps.video_seg.evaluate import evaluate_davis, write_csvs
from apps.video_seg.metrics import boundary_f_measure, seg2bmap, statistics
from dino.data.davis import davis_annotations
from dino.data.masks import mask_iou, read_indexed_png, write_indexed_png

SEQUENCES = ("car-shadow", "motocross-jump", "scooter-black")


def test_region_jaccard_hand_checked() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 1.0  # both empty
    a[:2, :2] = True  # 4 px
    assert mask_iou(a, b) == 0.0
    b[1:3, 1:3] = True  # 4 px, overlap 1 px -> 1/7
    assert mask_iou(a, b) == pytest.approx(1 / 7)


def test_seg2bmap_marks_the_boundary_half_a_pixel_towards_the_origin() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    # A pixel is boundary when it differs from its east, south or south-east neighbour: for the 3x3
    # square at (1..3, 1..3) that is the ring of the 4x4 square at (0..3, 0..3).
    expected = np.zeros((5, 5), bool)
    expected[0:4, 0:4] = True
    expected[1:3, 1:3] = False
    assert np.array_equal(seg2bmap(mask), expected)


def test_boundary_f_edge_cases_and_tolerance() -> None:
    empty = np.zeros((100, 100), bool)
    square = empty.copy()
    square[20:60, 20:60] = True
    assert boundary_f_measure(empty, empty) == 1.0  # P = R = 1
    assert boundary_f_measure(square, empty) == 0.0  # prediction empty: P = 1, R = 0
    assert boundary_f_measure(empty, square) == 0.0  # GT empty: P = 0, R = 1
    assert boundary_f_measure(square, square) == 1.0
    # Tolerance radius ceil(0.008 * sqrt(2) * 100) = 2 px: a 2-px shift still matches, a 6-px one never does.
    assert boundary_f_measure(square, np.roll(square, 2, axis=1)) == 1.0
    assert boundary_f_measure(square, np.roll(square, 6, axis=1)) < 0.6


def test_statistics_mean_recall_decay() -> None:
    values = np.array([1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0])
    stats = statistics(values)
    assert stats.mean == pytest.approx(0.5)
    assert stats.recall == pytest.approx(4 / 8)  # 1, 1, 0.8, 0.6 lie strictly above 0.5
    # Bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]: first bin [0..2], last bin [5..7].
    assert stats.decay == pytest.approx(np.mean([1.0, 1.0, 0.8]) - np.mean([0.2, 0.0, 0.0]))
    assert np.isnan(statistics(np.array([np.nan, np.nan])).mean)


def _perturbed(labels: np.ndarray, frame: int) -> np.ndarray:
    """A deterministic wrong answer: shifted GT, empty on some frames, a false blob on others."""
    if frame % 7 == 3:
        return np.zeros_like(labels)
    shift = (frame % 5 - 2) * 3
    result = np.roll(labels, (shift, -shift), axis=(0, 1))
    if frame % 4 == 0:
        y, x = 40 + 5 * frame % 300, 60 + 11 * frame % 700
        result[y : y + 25, x : x + 40] = labels.max()
    return result


def _two_objects(labels: np.ndarray) -> np.ndarray:
    """Split one object into two ids by 8-row bands, so both ids appear in every frame.

    (vos-benchmark only starts counting an object on the first frame where it appears, while
    davis2017-evaluation counts every object of the first annotation on every frame; objects present
    throughout keep the two comparable.)
    """
    split = labels.copy()
    bands = (np.arange(labels.shape[0]) // 8 % 2 == 1)[:, None]
    split[(split == 1) & bands] = 2
    return split


def _build(tmp_path: Path, davis: Path, objects: int) -> tuple[Path, Path]:
    """A DAVIS-layout ground truth (one or two objects) and a perturbed results folder for SEQUENCES."""
    gt_root, results = tmp_path / f"gt{objects}", tmp_path / f"results{objects}"
    for sequence in SEQUENCES:
        for frame, path in enumerate(davis_annotations(davis, sequence)):
            labels = read_indexed_png(path)
            if objects == 2:
                labels = _two_objects(labels)
            write_indexed_png(gt_root / "Annotations" / "480p" / sequence / path.name, labels)
            write_indexed_png(results / sequence / path.name, _perturbed(labels, frame))
    (gt_root / "ImageSets" / "2017").mkdir(parents=True)
    (gt_root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    return gt_root, results


@pytest.mark.slow
@pytest.mark.parametrize("objects", [1, 2])
def test_same_j_and_f_as_vos_benchmark(shared_data, tmp_path, objects: int) -> None:
    vos = pytest.importorskip("vos_benchmark.benchmark")
    gt_root, results = _build(tmp_path, shared_data / "davis2016-dev", objects)
    ours = evaluate_davis(gt_root, results, progress=False)
    assert len(ours.objects) == len(SEQUENCES) * objects

    mask_copy = tmp_path / f"vos{objects}"  # vos-benchmark writes results.csv into the folder it reads
    shutil.copytree(results, mask_copy)
    global_jf, global_j, global_f, per_object = vos.benchmark(
        [str(gt_root / "Annotations" / "480p")], [str(mask_copy)], strict=True, num_processes=1, verbose=False
    )
    scores = ours.global_scores()
    # vos-benchmark reports percentages.
    assert scores["J-Mean"] * 100 == pytest.approx(global_j[0], abs=1e-6)
    assert scores["F-Mean"] * 100 == pytest.approx(global_f[0], abs=1e-6)
    assert scores["J&F-Mean"] * 100 == pytest.approx(global_jf[0], abs=1e-6)
    for scores_of_object in ours.objects:
        iou, boundary = per_object[0][scores_of_object.sequence]
        assert scores_of_object.j.mean * 100 == pytest.approx(iou[scores_of_object.object_id], abs=1e-6)
        assert scores_of_object.f.mean * 100 == pytest.approx(boundary[scores_of_object.object_id], abs=1e-6)
    # The perturbations are far from perfect and far from useless.
    assert 0.2 < scores["J-Mean"] < 0.9 and 0.1 < scores["F-Mean"] < 0.9

    written = write_csvs(ours, results)
    assert [p.name for p in written] == ["global_results-val.csv", "per-sequence_results-val.csv"]
    header, row = written[0].read_text().splitlines()
    assert header == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert float(row.split(",")[1]) == pytest.approx(scores["J-Mean"], abs=5e-4)
    assert written[1].read_text().splitlines()[1].startswith(f"{SEQUENCES[0]}_1,")
