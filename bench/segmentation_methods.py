"""Mask methods side by side on DAVIS-2016 dev (every 5th frame), for several backbones, with paired intervals.

For each backbone, ``dino seg-eval`` runs every method at the photo's own size with the aspect ratio kept
(the defaults): ``diffusion`` (the default), ``attention`` with the best head per frame (an oracle that peeks at
the ground truth) and with the mean-over-heads map, and ``ncut`` (TokenCut). Then each method is compared with
the best-head attention by ``bench/paired_jaccard.py``'s sequence bootstrap (95 % interval of the mean paired
difference). Every run writes under WORK/<backbone>/<method>/ and is skipped when its results exist.

    python bench/segmentation_methods.py --work seg_methods \\
        --weights dinov2_vits14_imgfocus dino_vitt16_cpu random:vit_small/16
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from paired_jaccard import paired_difference, read_scores

from dino.atomic import atomic_write_json
from dino.cli import main as dino

METHODS = {
    "diffusion": ["--method", "diffusion"],
    "attention, best head (oracle)": ["--method", "attention", "--heads", "best"],
    "attention, mean map": ["--method", "attention", "--heads", "mean"],
    "ncut (TokenCut)": ["--method", "ncut"],
}
BASELINE = "attention, best head (oracle)"


def run(weights: str, davis: Path, work: Path) -> dict:
    rows = {}
    for name, options in METHODS.items():
        out = work / weights.replace(":", "_").replace("/", "_") / "_".join(options[1::2])
        if not (out / "results.json").is_file():
            argv = ["seg-eval", "--davis", str(davis), "--out", str(out), "--weights", weights, *options]
            if dino([*argv, "--device", "cpu", "--workers", "0", "--no-progress"]) != 0:
                raise RuntimeError(f"seg-eval {weights} {options} failed")
        rows[name] = {"jaccard": round(100 * json.loads((out / "results.json").read_text())["jaccard"], 1), "out": out}
    baseline = read_scores(rows[BASELINE]["out"] / "per_image.csv")
    for name, row in rows.items():
        if name != BASELINE:
            difference = paired_difference(read_scores(row.pop("out") / "per_image.csv"), baseline)
            low, high = difference["ci95"]
            row["minus_best_head"] = {"mean": 100 * difference["mean_difference"], "low": 100 * low, "high": 100 * high}
        else:
            row.pop("out")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--weights", nargs="+", default=["default"])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("DINO_DATA_DIR", "../shared/data"))
    args = parser.parse_args()
    table = {weights: run(weights, args.data_dir / "davis2016-dev", args.work) for weights in args.weights}
    atomic_write_json(args.work / "summary.json", table)
    print("| backbone | " + " | ".join(METHODS) + " |")
    print("|---" * (len(METHODS) + 1) + "|")
    for weights, rows in table.items():
        cells = []
        for name in METHODS:
            row = rows[name]
            cell = f"{row['jaccard']:.1f}"
            if "minus_best_head" in row:
                d = row["minus_best_head"]
                cell += f" ({d['mean']:+.1f}; {d['low']:+.1f} to {d['high']:+.1f})"
            cells.append(cell)
        print(f"| `{weights}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
