"""Backbone inference throughput and peak memory: fused SDPA attention vs the explicit-softmax path.

Each configuration runs in a fresh subprocess so that its peak memory is its own (CUDA: peak allocated;
CPU: peak resident set size of the process, which includes the interpreter and libraries).

    python bench/vit_throughput.py --batch-size 8 --iters 5
    python bench/vit_throughput.py --device cuda --dtype bf16 --batch-size 64 --markdown
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

CONFIGS = [
    ("vit_small", 16, 224, 224),
    ("vit_small", 8, 224, 224),
    ("vit_base", 16, 224, 224),
    ("vit_small", 16, 480, 832),
    ("vit_small", 8, 480, 832),
]
PATHS = ("sdpa", "explicit")


def run_one(arch: str, patch: int, height: int, width: int, path: str, args: argparse.Namespace) -> dict:
    """Time `iters` forward passes after `warmup` ones; returns images/s and peak memory in MiB."""
    from dino.models import build_vit
    from dino.runtime import autocast_context, autocast_dtype

    device = torch.device(args.device)
    model = build_vit(arch, patch).eval().to(device)
    x = torch.randn(args.batch_size, 3, height, width, device=device)
    context = autocast_context(device, autocast_dtype(device, args.dtype))

    def forward() -> torch.Tensor:
        if path == "sdpa":
            return model.forward_features(x)
        tokens = model.prepare_tokens(x)
        for block in model.blocks:
            tokens = block.forward_with_attention(tokens).tokens
        return model.norm(tokens)

    with torch.inference_mode(), context:
        for _ in range(args.warmup):
            forward()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.iters):
            forward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "arch": arch,
        "patch": patch,
        "size": f"{height}x{width}",
        "tokens": 1 + (height // patch) * (width // patch),
        "path": path,
        "batch": args.batch_size,
        "dtype": args.dtype,
        "images_per_s": args.batch_size * args.iters / elapsed,
        "peak_mib": peak_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    parser.add_argument("--only", help="run one configuration, e.g. vit_small/16/480x832/sdpa (used internally)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.only:
        arch, patch, size, path = args.only.split("/")
        height, width = map(int, size.split("x"))
        print(json.dumps(run_one(arch, int(patch), height, width, path, args)))
        return

    rows = []
    for arch, patch, height, width in CONFIGS:
        for path in PATHS:
            command = [sys.executable, __file__, "--only", f"{arch}/{patch}/{height}x{width}/{path}"]
            command += ["--device", args.device, "--dtype", args.dtype, "--batch-size", str(args.batch_size)]
            command += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
                rows.append({"arch": arch, "patch": patch, "size": f"{height}x{width}", "path": path, "error": message})
            else:
                rows.append(json.loads(result.stdout))
            print(json.dumps(rows[-1]), file=sys.stderr)
    if args.markdown:
        print("| model | input | tokens | attention | batch | dtype | images/s | peak memory (MiB) |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            model = f"{row['arch'].replace('vit_', 'ViT-').replace('small', 'S').replace('base', 'B')}/{row['patch']}"
            if "error" in row:
                print(f"| {model} | {row['size']} | | {row['path']} | | | failed: {row['error']} | |")
            else:
                print(
                    f"| {model} | {row['size']} | {row['tokens']} | {row['path']} | {row['batch']} | {row['dtype']} "
                    f"| {row['images_per_s']:.2f} | {row['peak_mib']:.0f} |"
                )
    else:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
