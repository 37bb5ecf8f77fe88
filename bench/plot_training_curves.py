"""Plot loss and collapse diagnostics (teacher entropy, KL(teacher‖student), ln K) of a `dino train` run.

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

    out_dim = yaml.safe_load((run / "config.yaml").read_text())["model"]["out_dim"]
    ln_k = math.log(out_dim)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
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
    figure.tight_layout()
    with atomic_output_path(args.out) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
