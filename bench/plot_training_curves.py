"""Plot the curves of a `dino train` run: for DINO the loss and the collapse diagnostics (teacher entropy,
KL(teacher‖student), ln K); for DenseCL the global and dense InfoNCE losses beside ln(queue_len + 1) (the loss of
logits that tell nothing apart), the λ weighting and the global positive's top-1 accuracy against the queue.

python bench/plot_training_curves.py RUN_DIR docs/training_curves.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dino.atomic import atomic_output_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("out")
    args = parser.parse_args()
    run = Path(args.run_dir)
    records: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record  # a resumed run may repeat steps: keep the last
    steps = sorted(records)
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if config["run"].get("method", "dino") == "densecl":
        _plot_densecl(left, right, steps, records, config["densecl"]["queue_len"])
    else:
        _plot_dino(left, right, steps, records, config["model"]["out_dim"])
    figure.tight_layout()
    with atomic_output_path(args.out) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    print(f"wrote {args.out}")


def _plot_dino(left: plt.Axes, right: plt.Axes, steps: list[int], records: dict[int, dict], out_dim: int) -> None:
    ln_k = math.log(out_dim)
    left.plot(steps, [records[s]["loss"] for s in steps], label="loss H(teacher, student)")
    left.plot(steps, [records[s]["teacher_entropy"] for s in steps], label="teacher entropy h(P_t)")
    left.axhline(ln_k, color="gray", linestyle="--", label=f"ln K = {ln_k:.2f} (uniform collapse)")
    left.set_xlabel("step")
    left.set_ylabel("nats")
    left.legend()
    left.set_title("loss and teacher entropy")
    right.plot(steps, [records[s]["kl_teacher_student"] for s in steps], color="C2")
    right.set_xlabel("step")
    right.set_ylabel("nats")
    right.set_title("KL(teacher ‖ student) (0 = collapse)")


def _plot_densecl(left: plt.Axes, right: plt.Axes, steps: list[int], records: dict[int, dict], queue_len: int) -> None:
    chance = math.log(queue_len + 1)
    left.plot(steps, [records[s]["loss_global"] for s in steps], label="global InfoNCE")
    left.plot(steps, [records[s]["loss_dense"] for s in steps], label="dense InfoNCE")
    left.plot(steps, [records[s]["loss"] for s in steps], label="loss (1−λ)·global + λ·dense", color="k")
    left.axhline(chance, color="gray", linestyle="--", label=f"ln(queue_len + 1) = {chance:.2f}")
    left.set_xlabel("step")
    left.set_ylabel("nats")
    left.legend()
    left.set_title("DenseCL losses")
    right.plot(steps, [100 * records[s]["accuracy"] for s in steps], color="C2", label="global positive top-1 (%)")
    right.plot(steps, [100 * records[s]["lambda"] for s in steps], color="C3", linestyle=":", label="λ × 100")
    right.set_xlabel("step")
    right.legend()
    right.set_title("positive ranked first among queue + 1 keys")


if __name__ == "__main__":
    main()
