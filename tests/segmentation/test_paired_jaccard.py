"""bench/paired_jaccard.py: the paired difference and its sequence bootstrap on hand-made scores."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "paired_jaccard.py"
spec = importlib.util.spec_from_file_location("paired_jaccard", PATH)
paired_jaccard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_jaccard)


def test_paired_difference_on_hand_made_scores(tmp_path: Path) -> None:
    a = {"cat/0": 0.5, "cat/1": 0.7, "dog/0": 0.2, "bird/0": 0.9}
    b = {"cat/0": 0.4, "cat/1": 0.7, "dog/0": 0.4, "fish/0": 0.1}  # only 3 images in common
    result = paired_jaccard.paired_difference(a, b)
    # Differences: cat 0.1 and 0.0, dog -0.2 -> mean -0.1/3; A wins cat/0 only, and the cat sequence.
    assert result["images"] == 3 and result["sequences"] == 2
    assert result["mean_difference"] == pytest.approx(-0.1 / 3)
    assert result["images_won"] == 1 and result["sequences_won"] == 1
    # Resampling whole sequences: the mean lies between all-dog (-0.2) and all-cat (0.05).
    low, high = result["ci95"]
    assert -0.2 - 1e-9 <= low <= result["mean_difference"] <= high <= 0.05 + 1e-9
    same = paired_jaccard.paired_difference({"s/0": 0.3, "t/0": 0.5}, {"s/0": 0.1, "t/0": 0.3})
    assert same["ci95"] == pytest.approx((0.2, 0.2))

    csv_file = tmp_path / "per_image.csv"
    csv_file.write_text("name,jaccard,objects\ncat/0,0.5,1\ndog/0,0.25,1\n")
    assert paired_jaccard.read_scores(csv_file) == {"cat/0": 0.5, "dog/0": 0.25}
    with pytest.raises(ValueError, match="no image in common"):
        paired_jaccard.paired_difference({"x/0": 1.0}, {"y/0": 1.0})
