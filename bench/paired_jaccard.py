"""Is one mask method really better than another? Paired per-image Jaccard differences with a bootstrap CI.

Reads two ``per_image.csv`` files written by ``dino seg-eval`` on the same images (columns ``name``, ``jaccard``)
and reports the mean difference A − B, a 95 % confidence interval from resampling whole sequences (frames of
one sequence are strongly correlated, so resampling frames would overstate the certainty; the sequence is the
part of ``name`` before the first ``/``, e.g. DAVIS ``blackswan/00005``), and how many frames and sequences A
wins.

    python bench/paired_jaccard.py card/default/seg_ncut/per_image.csv \\
        card/default/seg_attention_merged/per_image.csv
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def read_scores(path: Path) -> dict[str, float]:
    with path.open(newline="") as handle:
        return {row["name"]: float(row["jaccard"]) for row in csv.DictReader(handle)}


def paired_difference(a: dict[str, float], b: dict[str, float], resamples: int = 5000, seed: int = 0) -> dict:
    """Mean A − B over the images both scored, its 95 % sequence-bootstrap interval, and the wins of A."""
    names = sorted(a.keys() & b.keys())
    if not names:
        raise ValueError("the two files have no image in common")
    by_sequence: dict[str, list[float]] = defaultdict(list)
    for name in names:
        by_sequence[name.split("/")[0]].append(a[name] - b[name])
    sequences = sorted(by_sequence)
    rng = np.random.default_rng(seed)
    means = [
        np.mean(np.concatenate([by_sequence[s] for s in rng.choice(sequences, len(sequences))]))
        for _ in range(resamples)
    ]
    differences = np.concatenate([by_sequence[s] for s in sequences])
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "images": len(names),
        "sequences": len(sequences),
        "mean_difference": float(differences.mean()),
        "ci95": (float(low), float(high)),
        "images_won": int((differences > 0).sum()),
        "sequences_won": sum(float(np.mean(by_sequence[s])) > 0 for s in sequences),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="per_image.csv of method A")
    parser.add_argument("b", type=Path, help="per_image.csv of method B")
    parser.add_argument("--resamples", type=int, default=5000)
    args = parser.parse_args()
    result = paired_difference(read_scores(args.a), read_scores(args.b), args.resamples)
    low, high = result["ci95"]
    print(
        f"A − B = {100 * result['mean_difference']:+.2f} Jaccard points over {result['images']} images "
        f"(95 % CI over {result['sequences']} sequences: {100 * low:+.2f} to {100 * high:+.2f}); A wins "
        f"{result['images_won']}/{result['images']} images and {result['sequences_won']}/{result['sequences']} "
        "sequences"
    )


if __name__ == "__main__":
    main()
