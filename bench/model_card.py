"""The quality figures of docs/MODEL_CARD.md for one backbone, each measured with the project's own code.

1. k-NN sequence identity on DAVIS-2016 dev (bank = first half of each sequence's frames, queries = second
   half; ``dino.eval.knn``, T = 0.07, k = 10 and 20);
2. Jaccard of single-object masks on the DAVIS-2016 dev foreground, every 5th frame (``dino seg-eval``:
   attention best head / merged / mean map, and ncut);
3. label-propagation J&F on DAVIS-2016 dev (``dino video-seg`` + ``dino video-eval``, the reference protocol);
4. copy-detection mAP on the benchmark generated from the project's photos (``bench/copy_detection_real_check.py``;
   the default model never trained on its originals or distractors).

Every step writes its output under WORK and is skipped when that output exists, so a rerun resumes.
``WORK/summary.json`` collects the figures.

    python bench/model_card.py --weights default --work card/default --copy-work card/copy_real
    python bench/model_card.py --weights random:vit_tiny/16 --work card/random --copy-work card/copy_real
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

from copy_detection_real_check import run_eval as copy_detection_eval
from davis_knn_task import write_davis_knn_task

from dino.atomic import atomic_write_json
from dino.checkpoint import load_backbone
from dino.cli import main as dino
from dino.eval.knn import run_knn
from dino.runtime import Runtime

SEGMENTATION_RUNS = {
    "attention, best head": ["--method", "attention", "--heads", "best"],
    "attention, merged heads": ["--method", "attention", "--heads", "merged"],
    "attention, mean map": ["--method", "attention", "--heads", "mean"],
    "ncut": ["--method", "ncut"],
}


def _timed(name: str, step, summary: dict) -> None:
    start = time.time()
    summary[name] = step()
    summary.setdefault("seconds", {})[name] = round(time.time() - start, 1)
    print(name, json.dumps(summary[name]), flush=True)


def knn(weights: str, davis: Path, work: Path) -> dict:
    task = work / "knn_task"
    if not task.exists():
        write_davis_knn_task(davis, task)
    results = run_knn(
        load_backbone(weights),
        task / "train",
        task / "val",
        ks=(10, 20),
        cache_dir=work / "knn_cache",
        runtime=Runtime(device="cpu"),
    )
    return {f"{r.k}-NN": {"top1": round(r.top1, 2), "top5": round(r.top5, 2)} for r in results}


def segmentation(weights: str, davis: Path, work: Path) -> dict:
    scores = {}
    for name, options in SEGMENTATION_RUNS.items():
        out = work / ("seg_" + "_".join(options[1::2]))
        if not (out / "results.json").is_file():
            argv = ["seg-eval", "--davis", str(davis), "--every", "5", "--weights", weights, "--out", str(out)]
            if dino([*argv, *options, "--device", "cpu", "--workers", "0", "--no-progress"]) != 0:
                raise RuntimeError(f"seg-eval {options} failed")
        jaccard = json.loads((out / "results.json").read_text())["jaccard"]  # null when no object was scored
        scores[name] = None if jaccard is None else round(100 * jaccard, 1)
    return scores


def video(weights: str, davis: Path, work: Path) -> dict:
    out = work / "video"
    common = ["--davis", str(davis)]
    if dino(["video-seg", *common, "--weights", weights, "--out", str(out), "--device", "cpu", "--no-progress"]):
        raise RuntimeError("video-seg failed")
    if not (out / "global_results-val.csv").is_file() and dino(["video-eval", *common, "--results", str(out)]):
        raise RuntimeError("video-eval failed")
    with open(out / "global_results-val.csv") as handle:
        row = next(csv.DictReader(handle))
    return {key: round(100 * float(row[key]), 1) for key in ("J&F-Mean", "J-Mean", "F-Mean")}


def copy_detection(weights: str, copy_work: Path) -> dict:
    runtime = Runtime(device="cpu", batch_size=16, num_workers=1, progress=False)
    runs = copy_detection_eval(copy_work, weights, runtime)["runs"]
    strong = {name: next(b["mAP"] for b in run["blocks"] if b["block"] == "strong") for name, run in runs.items()}
    max_f1 = next(c for c in runs["none"]["calibration"] if c["criterion"] == "max_f1")
    return {
        "strong mAP": {name: round(value, 3) for name, value in strong.items()},
        "max-F1 threshold (no whitening)": round(max_f1["threshold"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default")
    parser.add_argument("--work", type=Path, required=True, help="output folder of this backbone's runs")
    parser.add_argument("--copy-work", type=Path, required=True, help="copy-detection benchmark folder (shared)")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("DINO_DATA_DIR", "../shared/data"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["knn", "segmentation", "video", "copy"])
    args = parser.parse_args()
    davis = args.data_dir / "davis2016-dev"
    args.work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"weights": args.weights}
    steps = {
        "knn": lambda: knn(args.weights, davis, args.work),
        "segmentation": lambda: segmentation(args.weights, davis, args.work),
        "video": lambda: video(args.weights, davis, args.work),
        "copy": lambda: copy_detection(args.weights, args.copy_work),
    }
    for name, step in steps.items():
        if name not in args.skip:
            _timed(name, step, summary)
    atomic_write_json(args.work / "summary.json", summary)


if __name__ == "__main__":
    main()
