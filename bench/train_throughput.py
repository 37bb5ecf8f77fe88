"""Training throughput (images/s) and peak memory of `dino train` presets on synthetic images.

Runs `--steps` optimisation steps of each preset (full recipe: multi-crop, student + EMA teacher, loss,
clipping, AdamW) on random images and reports the median images/s after the first step, the peak process
RSS (CPU) and the peak CUDA memory (GPU). Results go to docs/training.md by hand, with the command.

    OMP_NUM_THREADS=1 python bench/train_throughput.py --presets cpu_small --steps 6 --device cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dino.train.config import load_config
from dino.train.trainer import train


def _images(folder: Path, count: int, size: int = 256) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def measure(preset: str, steps: int, device: str, batch_size: int | None, extra: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"run.device={device}",
            "run.num_workers=0",
            "run.progress=false",
            f"run.max_steps={steps}",
            f"run.output_dir={tmp}/out",
            "run.log_every=1",
            *extra,
        ]
        if batch_size:
            overrides.append(f"optim.batch_size_per_gpu={batch_size}")
        config = load_config(preset, overrides=overrides)
        data = _images(Path(tmp) / "images", config.optim.batch_size_per_gpu * 2)
        config.run.data_path = [str(data)]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = train(config, resume=False)
    crops = config.crops
    speeds = [record["images_per_s"] for record in result.history[1:]]
    return {
        "preset": preset,
        "device": device,
        "arch": f"{config.model.arch}/{config.model.patch_size}",
        "crops": f"2x{crops.global_crops_size}^2 + {crops.local_crops_number}x{crops.local_crops_size}^2",
        "batch_per_gpu": config.optim.batch_size_per_gpu,
        "images_per_s": round(statistics.median(speeds), 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak_cuda_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["cpu_small"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch per GPU")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    for preset in args.presets:
        print(json.dumps(measure(preset, args.steps, args.device, args.batch_size, args.overrides)))


if __name__ == "__main__":
    main()
