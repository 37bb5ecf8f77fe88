"""``dino video-seg`` (DAVIS folders or any video file) and ``dino video-eval`` (DAVIS J&F)."""

from __future__ import annotations

import argparse

from apps.video_seg.defaults import MAX_AFFINITY_MB, N_LAST_FRAMES, NEIGHBOURHOOD_RADIUS, TEMPERATURE, TOP_K
from dino.cli.arguments import (
    add_grid_layer_argument,
    add_weights_arguments,
    apply_grid_layer,
    backbone_from_args,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
)

__all__ = ["backbone_precision", "register"]


def _add_propagation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("propagation (defaults reproduce the reference, SPEC §11)")
    group.add_argument(
        "--n-last-frames", type=non_negative_int, default=N_LAST_FRAMES, help="previous frames kept as context"
    )
    group.add_argument(
        "--radius",
        type=non_negative_int,
        default=NEIGHBOURHOOD_RADIUS,
        help="neighbourhood radius in patches (a ResNet's grid cells), not scaled with their size, as the reference "
        "keeps 12 for patch 8 and 16; 0 = whole frame (default: %(default)s)",
    )
    group.add_argument(
        "--topk", type=positive_int, default=TOP_K, help="sources kept per target patch over all context"
    )
    group.add_argument("--temperature", type=positive_float, default=TEMPERATURE, help="affinity temperature")
    group.add_argument(
        "--no-minmax-norm",
        action="store_true",
        help="skip the reference's per-channel min-max normalisation before the argmax",
    )
    group.add_argument(
        "--imagenet-std",
        action="store_true",
        help="normalise with ImageNet's std 0.229 instead of the reference's 0.228",
    )
    group.add_argument(
        "--max-affinity-mb",
        type=positive_float,
        default=MAX_AFFINITY_MB,
        help="largest affinity chunk in MiB; results do not depend on it (default: %(default)s)",
    )
    group.add_argument(
        "--affinity-dtype",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="fp32 is exact; bf16/fp16 halve affinity memory on GPU (default: %(default)s)",
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 …")
    runtime.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="backbone precision: fp32 reproduces the reference, the default with --davis (the protocol); auto, "
        "the default with --video, is bf16 autocast where the hardware computes it natively (CUDA; CPUs with "
        "AVX512-BF16, AMX or Arm BF16) and fp32 elsewhere",
    )
    runtime.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _setup(args: argparse.Namespace):
    from apps.video_seg.preprocess import FramePreprocessing
    from apps.video_seg.propagation import PropagationConfig
    from dino.runtime import Runtime

    config = PropagationConfig(
        n_last_frames=args.n_last_frames,
        radius=args.radius,
        topk=args.topk,
        temperature=args.temperature,
        minmax_norm=not args.no_minmax_norm,
        max_affinity_mb=args.max_affinity_mb,
        affinity_dtype=args.affinity_dtype,
    )
    preprocessing = FramePreprocessing(reference_std=not args.imagenet_std)
    runtime = Runtime(device=args.device, dtype=backbone_precision(args))
    device = runtime.torch_device()
    model = backbone_from_args(args).to(device)
    apply_grid_layer(model, args.grid_layer, args.patch_size)
    return model, config, preprocessing, device, runtime.autocast_dtype(device)


def backbone_precision(args: argparse.Namespace) -> str:
    """--dtype, or by default fp32 for the DAVIS protocol (its numbers stay the reference's) and auto for a video."""
    return args.dtype or ("fp32" if args.davis is not None else "auto")


def _video_seg(args: argparse.Namespace) -> int:
    if (args.davis is None) == (args.video is None):
        raise ValueError("give exactly one of --davis ROOT or --video FILE")
    if args.video is not None and args.first_mask is None:
        raise ValueError("--video needs --first-mask (a mask image of the first frame)")
    model, config, preprocessing, device, autocast = _setup(args)
    common = dict(
        model=model,
        config=config,
        preprocessing=preprocessing,
        device=device,
        autocast=autocast,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if args.davis is not None:
        from apps.video_seg.davis import segment_davis

        results = segment_davis(args.davis, args.out, sequences=args.sequences, **common)
        ran = [r for r in results if not r.skipped]
        if ran:
            frames = sum(r.frames - 1 for r in ran)
            seconds = sum(r.seconds for r in ran)
            print(f"{len(ran)} sequences, {frames} propagated frames, {frames / seconds:.2f} frames/s → {args.out}")
    else:
        from apps.video_seg.video import segment_video

        written = segment_video(args.video, args.first_mask, args.out, max_frames=args.max_frames, **common)
        print(
            f"{written.frames} frames, {written.frames_per_second:.2f} frames/s: masks in {written.masks}, "
            f"overlay {written.overlay} ({written.overlay_codec})"
        )
    return 0


def _video_eval(args: argparse.Namespace) -> int:
    from apps.video_seg.evaluate import evaluate_davis, format_table, write_csvs

    evaluation = evaluate_davis(args.davis, args.results, sequences=args.sequences, split=args.set)
    print(format_table(evaluation))
    for path in write_csvs(evaluation, args.results, args.set):
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``video-seg`` and ``video-eval`` to the ``dino`` command."""
    seg = subparsers.add_parser(
        "video-seg",
        help="propagate a first-frame mask through DAVIS sequences or any video",
        description="Semi-supervised video object segmentation by label propagation of DINO patch features "
        "(the DAVIS-2017 protocol of the DINO paper); with ResNet weights (dino_resnet50, a DINO, DenseCL or "
        "torchvision ResNet file) the cells of its layer3 grid (stride 16, --grid-layer) stand for the patches. "
        "With --davis: writes <out>/<sequence>/<frame>.png indexed PNGs (DAVIS palette); re-running into the same "
        "folder skips finished sequences. With --video: "
        "decodes any video OpenCV reads and writes <out>/masks/*.png and <out>/overlay.mp4 (H.264 with PyAV), "
        "the folder all at once when the last frame is done.",
    )
    source = seg.add_argument_group("input")
    source.add_argument("--davis", help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets/2017/val.txt)")
    source.add_argument("--sequences", nargs="+", help="sequence names (default: ImageSets/2017/val.txt)")
    source.add_argument("--video", help="a video file (mp4, avi, … anything OpenCV decodes)")
    source.add_argument(
        "--first-mask",
        help="with --video: mask of the first frame, same size: a palette PNG (indices = objects) or flat "
        "colours on black (one object per colour)",
    )
    source.add_argument("--max-frames", type=positive_int, help="with --video: stop after this many frames")
    seg.add_argument("--out", required=True, type=output_folder, help="results folder")
    seg.add_argument(
        "--overwrite",
        action="store_true",
        help="--davis: write into a non-empty folder that is not a matching earlier run; --video: replace an "
        "earlier --video output",
    )
    add_weights_arguments(seg)
    add_grid_layer_argument(
        seg, "the labels propagate on (its cells are the patches: 52x30 at layer3, 26x15 at layer4 for 832x480)"
    )
    _add_propagation_arguments(seg)
    seg.set_defaults(func=_video_seg)

    evaluation = subparsers.add_parser(
        "video-eval",
        help="DAVIS J&F of a results folder (the official davis2017-evaluation numbers)",
        description="Region similarity J and boundary accuracy F of semi-supervised results, as the official "
        "davis2017-evaluation computes them (first and last frames excluded). Prints the table and writes "
        "global_results-<set>.csv and per-sequence_results-<set>.csv into the results folder.",
    )
    evaluation.add_argument("--davis", required=True, help="DAVIS root with Annotations/480p and ImageSets/2017")
    evaluation.add_argument("--results", required=True, help="folder with <sequence>/<frame>.png results")
    evaluation.add_argument(
        "--sequences",
        nargs="+",
        help="sequence names (default: those the video-seg run into --results was asked for, from its "
        "video_seg.json; without one, ImageSets/2017/<set>.txt)",
    )
    evaluation.add_argument("--set", default="val", help="ImageSets split and CSV suffix (default: %(default)s)")
    evaluation.set_defaults(func=_video_eval)
