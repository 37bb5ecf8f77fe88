"""Throughput of `dino attention`'s mask computation: one forward pass with attention, the reference
threshold of every head and the nearest upsampling, batched over same-size images; plus the time per image of
the foreground-mask methods after the forward pass (CPU): the default attention diffusion on a 854×480 photo
(diffusion, guided filter and Otsu at the photo's size) and the normalized cut.

Random weights (speed does not depend on them) and random 480×480 inputs (the reference preprocessing's
output size), so decoding and figure writing are not included.

    python bench/segmentation_throughput.py --batch-sizes 1 4 8 --iters 3
    python bench/segmentation_throughput.py --device cuda --dtype bf16 --batch-sizes 1 16 64 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from PIL import Image

from apps.segmentation.diffusion import diffusion_foreground, resized_size
from apps.segmentation.masks import DEFAULT_THRESHOLD, cls_attention_maps, threshold_attention, upsample_nearest
from apps.segmentation.ncut import ncut_foreground
from dino.checkpoint import load_backbone
from dino.runtime import autocast_context, autocast_dtype


def time_masks(model: torch.nn.Module, batch_size: int, size: int, args: argparse.Namespace) -> float:
    """Images/s of forward_with_attention + threshold + upsample over `iters` batches after one warm-up."""
    device = torch.device(args.device)
    images = torch.randn(batch_size, 3, size, size, device=device)
    grid = model.grid_size(size, size)
    context = autocast_context(device, autocast_dtype(device, args.dtype))

    def step() -> torch.Tensor:
        with torch.inference_mode(), context:
            attention = model.forward_with_attention(images).attention.float()
        masks = threshold_attention(cls_attention_maps(attention, grid), DEFAULT_THRESHOLD)
        return upsample_nearest(masks, model.patch_size).cpu()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * args.iters / (time.perf_counter() - start)


def time_ncut(model: torch.nn.Module, size: int, repeats: int) -> float:
    """Seconds per image of the normalized cut alone (keys already computed)."""
    with torch.inference_mode():
        keys = model.forward_with_attention(torch.randn(1, 3, size, size)).keys[0].float()
    grid = model.grid_size(size, size)
    start = time.perf_counter()
    for _ in range(repeats):
        ncut_foreground(keys, grid)
    return (time.perf_counter() - start) / repeats


def time_diffusion(model: torch.nn.Module, size: int, repeats: int) -> float:
    """Seconds per 854×480 photo of the attention diffusion alone (attention and keys already computed)."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 854, 3), dtype=np.uint8))
    resized = resized_size((480, 854), size, keep_aspect=True)
    height, width = (
        (resized[0] // model.patch_size) * model.patch_size,
        (resized[1] // model.patch_size) * model.patch_size,
    )
    with torch.inference_mode():
        out = model.forward_with_attention(torch.randn(1, 3, height, width))
    maps = cls_attention_maps(out.attention.float(), model.grid_size(height, width))[0]
    keys = out.keys[0].float()
    start = time.perf_counter()
    for _ in range(repeats):
        diffusion_foreground(maps, keys, photo, model.patch_size, resized)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="random:vit_small/16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--ncut-repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    model = load_backbone(args.weights).eval().to(args.device)
    rows = [
        {"stage": "masks", "batch": batch, "images_per_s": time_masks(model, batch, args.size, args)}
        for batch in args.batch_sizes
    ]
    seconds = time_ncut(model.cpu(), args.size, args.ncut_repeats)
    rows.append({"stage": "ncut (CPU, per image)", "batch": 1, "images_per_s": 1 / seconds})
    seconds = time_diffusion(model.cpu(), args.size, args.ncut_repeats)
    rows.append({"stage": "diffusion mask, 854×480 photo (CPU, per image)", "batch": 1, "images_per_s": 1 / seconds})
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.markdown:
        print(f"{args.weights}, {args.size}x{args.size}, {args.device} {args.dtype}; {machine}; load avg {load:.1f}")
        print("| stage | batch | images/s |")
        print("|---|---|---|")
        for row in rows:
            print(f"| {row['stage']} | {row['batch']} | {row['images_per_s']:.2f} |")
    else:
        print(
            json.dumps(
                {"weights": args.weights, "device": args.device, "machine": machine, "load": load, "rows": rows},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
