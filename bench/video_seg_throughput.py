"""Label-propagation speed and peak memory: apps.video_seg (chunked, band-limited) vs the reference port.

The backbone is left out (it is the same forward in both; see bench/vit_throughput.py for its cost): each
run propagates through `frames` target frames with random unit features of the patch grid of a ViT-S at
480p and a full 8-frame context. Each configuration runs in a fresh subprocess so that its peak resident
set size is its own (interpreter and libraries included).

    python bench/video_seg_throughput.py --markdown

It ends with the affinity sizes of each grid (apps.video_seg.propagation.affinity_budget_mb), the table of
docs/video_seg.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# (label, grid h, grid w): ViT-S/16 and ViT-S/8 on 480x832 (DAVIS 854x480) and ViT-S/8 on 480x1152.
GRIDS = [("S/16 480x832", 30, 52), ("S/8 480x832", 60, 104), ("S/8 480x1152", 60, 144)]
CONTEXTS = 8
DIM = 384
CLASSES = 3


def run_one(implementation: str, height: int, width: int, frames: int, max_affinity_mb: float) -> dict:
    torch.manual_seed(0)
    hw = height * width
    sources = [torch.randn(DIM, hw) for _ in range(CONTEXTS)]
    labels = [torch.rand(1, CLASSES, height, width) for _ in range(CONTEXTS)]
    targets = [torch.randn(hw, DIM) for _ in range(frames)]
    if implementation == "reference":
        sys.path.insert(0, str(Path(__file__).parent))
        import video_seg_reference as reference

        class Features:  # stands in for the backbone: returns the precomputed target features
            patch_size = 1

            def __init__(self) -> None:
                self.queue = list(targets)

            def get_intermediate_layers(self, x, n=1):
                return [torch.cat([torch.zeros(1, DIM), self.queue.pop(0)])[None]]

        from apps.video_seg.propagation import neighbourhood_mask

        model = Features()
        # The reference builds this (n_ctx, hw, hw) float mask once per video with a Python loop; it is
        # built here with the (tested-equal) vectorised function and left out of the timing.
        index = torch.arange(hw)
        mask = neighbourhood_mask(index, index, width, 12).float()[None].repeat(CONTEXTS, 1, 1)
        start = time.perf_counter()
        for _ in range(frames):
            _, _, mask = reference.label_propagation(
                model, torch.zeros(3, height, width), sources, labels, mask_neighborhood=mask
            )
    else:
        from apps.video_seg.propagation import LabelPropagator, PropagationConfig, propagate_labels

        config = PropagationConfig(max_affinity_mb=max_affinity_mb)
        stacked = torch.stack([LabelPropagator.source(s.T) for s in sources])
        stacked_labels = torch.stack([label[0].reshape(CLASSES, -1) for label in labels])
        start = time.perf_counter()
        for target in targets:
            propagate_labels(target, stacked, stacked_labels, (height, width), config)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"frames_per_s": frames / seconds, "peak_rss_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--max-affinity-mb", type=float, default=512.0)
    parser.add_argument(
        "--skip-reference-above",
        type=int,
        default=6240,
        help="patches; the reference at ViT-S/8 480x1152 needs > 10 GiB",
    )
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        implementation, height, width = args.one.split(",")
        result = run_one(implementation, int(height), int(width), args.frames, args.max_affinity_mb)
        print(json.dumps(result))
        return
    rows = []
    for label, height, width in GRIDS:
        for implementation in ("ours", "reference"):
            if implementation == "reference" and height * width > args.skip_reference_above:
                rows.append((label, implementation, None))
                continue
            command = [
                sys.executable,
                __file__,
                "--one",
                f"{implementation},{height},{width}",
                "--frames",
                str(args.frames),
                "--max-affinity-mb",
                str(args.max_affinity_mb),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append((label, implementation, json.loads(output.strip().splitlines()[-1])))
    if args.markdown:
        print("| grid | implementation | propagation frames/s | peak RSS (MiB) |\n|---|---|---|---|")
    for label, implementation, result in rows:
        if result is None:
            print(
                f"| {label} | {implementation} | not run | not run |"
                if args.markdown
                else f"{label:14} {implementation:10} not run"
            )
        elif args.markdown:
            print(f"| {label} | {implementation} | {result['frames_per_s']:.2f} | {result['peak_rss_mib']:.0f} |")
        else:
            print(
                f"{label:14} {implementation:10} {result['frames_per_s']:8.2f} frames/s "
                f"{result['peak_rss_mib']:8.0f} MiB"
            )
    print_affinity_sizes(args.markdown)


def print_affinity_sizes(markdown: bool) -> None:
    """The affinity memory of each grid (docs/video_seg.md, "Memory"): the reference's full tensor and our chunks."""
    from apps.video_seg.propagation import NEIGHBOURHOOD_RADIUS, affinity_budget_mb

    header = "| grid | reference affinity alone (MiB) | one target row + its band | one target patch + its band |"
    print(f"\n{header}\n|---|---|---|---|" if markdown else f"\naffinity sizes, {CONTEXTS} context frames, fp32")
    for label, height, width in GRIDS:
        sizes = affinity_budget_mb((height, width), CONTEXTS, NEIGHBOURHOOD_RADIUS)
        cells = [f"{sizes[key]:.2f}" for key in ("reference_full", "one_row_band", "one_patch_band")]
        plain = f"{label:14} " + " ".join(f"{cell:>10}" for cell in cells)
        print(f"| {label} | {' | '.join(cells)} |" if markdown else plain)


if __name__ == "__main__":
    main()
