"""`dino attention` and `dino seg-eval`: argument parsing, then one call into the Python API."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from apps.segmentation.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THRESHOLD,
    MASK_METHODS,
    NCUT_EPS,
    NCUT_TAU,
    REFERENCE_IMAGE_SIZE,
)
from dino.cli.arguments import (
    add_grid_layer_argument,
    add_runtime_arguments,
    add_weights_arguments,
    apply_grid_layer,
    backbone_from_args,
    output_folder,
    positive_float,
    positive_int,
    runtime_from_args,
)

__all__ = ["register"]


def _add_preprocessing_arguments(parser: argparse.ArgumentParser, keep_aspect: bool) -> None:
    group = parser.add_argument_group("preprocessing (SPEC §10)")
    group.add_argument(
        "--size",
        type=positive_int,
        default=REFERENCE_IMAGE_SIZE,
        help="resize the short side (--keep-aspect) or both sides (--no-keep-aspect) to SIZE, bilinear, then "
        "crop to a multiple of the patch size (reference: %(default)s)",
    )
    group.add_argument(
        "--keep-aspect",
        action=argparse.BooleanOptionalAction,
        default=keep_aspect,
        help="keep the aspect ratio; --no-keep-aspect is the paper's square SIZE×SIZE input "
        + ("(default: on, the better masks)" if keep_aspect else "(default: off, the paper's figures)"),
    )


def _add_threshold_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="fraction of each head's attention mass a mask keeps (paper: %(default)s)",
    )


def _attention(args: argparse.Namespace) -> int:
    from apps.segmentation.inference import no_attention_message
    from dino.models.backbone import is_resnet

    model = backbone_from_args(args)
    apply_grid_layer(model, args.grid_layer, args.patch_size)
    has_attention = not is_resnet(model)
    if not has_attention and (args.mask or not args.ncut):
        raise ValueError(
            no_attention_message(
                model,
                f"use --ncut{' --no-mask' if args.mask else ''} for the normalized-cut foreground mask of its "
                f"{model.grid_layer} grid (img.png, ncut-mask.png, ncut-overlay.png), or score such masks with dino "
                "seg-eval --method ncut",
            )
        )
    from apps.segmentation.visualize import save_attention_figures

    folders = save_attention_figures(
        model,
        args.images,
        args.out,
        threshold=args.threshold,
        size=args.size,
        keep_aspect=args.keep_aspect,
        foreground=has_attention if args.mask is None else args.mask,
        ncut=args.ncut,
        runtime=runtime_from_args(args),
    )
    shown = "*/summary.png" if has_attention else "*/ncut-overlay.png"
    print(f"wrote figures of {len(folders)} image(s) under {args.out} (see {shown})")
    return 0


def _seg_eval(args: argparse.Namespace) -> int:
    from apps.segmentation.evaluate import evaluate_masks, write_results
    from apps.segmentation.voc import davis_samples, voc_samples

    if args.voc:
        samples = voc_samples(args.voc, args.split, args.masks)
        protocol = {"dataset": "voc", "root": str(args.voc), "split": args.split, "masks": args.masks}
    else:
        samples = davis_samples(args.davis, args.split, args.every)
        protocol = {
            "dataset": "davis",
            "root": str(args.davis),
            "split": args.split,
            "every": args.every,
            "masks": "foreground (id > 0)",
        }
    if args.limit:
        samples = samples[: args.limit]
        protocol["limit"] = args.limit
    model = backbone_from_args(args)
    apply_grid_layer(model, args.grid_layer, args.patch_size)
    result = evaluate_masks(
        model,
        samples,
        method=args.method,
        heads=args.heads,
        threshold=args.threshold,
        size=args.size,
        keep_aspect=args.keep_aspect,
        resolution=args.resolution,
        void=args.void,
        tau=args.tau,
        eps=args.eps,
        runtime=runtime_from_args(args),
        protocol=protocol,
    )
    summary, rows = write_results(result, args.out)
    score = "n/a" if math.isnan(result.jaccard) else f"{100 * result.jaccard:.1f}"
    print(f"Jaccard {score} over {result.images} images ({result.objects} objects); wrote {summary} and {rows}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `attention` and `seg-eval` verbs."""
    _register_attention(subparsers)
    _register_seg_eval(subparsers)


def _register_attention(subparsers: argparse._SubParsersAction) -> None:
    """`dino attention`: the per-head attention figures of images."""
    attention = subparsers.add_parser(
        "attention",
        help="per-head [CLS] attention maps and masks of images",
        description="For each image (files or folders, searched recursively): the last layer's per-head [CLS] "
        "attention heatmaps, the masks keeping THRESHOLD of each head's attention mass (contours in distinct "
        "colours), the mean-attention heatmap, the foreground mask at the photo's size, and one combined summary.png, "
        "written under OUT/<image stem>/. One forward pass per image, batched over same-size images. A ResNet "
        "(dino_resnet50, a ResNet file) has no self-attention: it is refused unless --ncut is given, and then "
        "writes img.png, ncut-mask.png and ncut-overlay.png from the normalized cut of its layer3 grid.",
    )
    attention.add_argument("images", nargs="+", help="image files or folders")
    attention.add_argument("--out", required=True, type=output_folder, help="output folder")
    _add_threshold_argument(attention)
    attention.add_argument(
        "--mask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write the foreground mask at the photo's size, mask.png and mask-overlay.png: the mean "
        "attention diffused over the patch graph, refined on the photo (seg-eval --method diffusion) (default: on "
        "for a ViT; a ResNet has no attention)",
    )
    attention.add_argument(
        "--ncut",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also write TokenCut's normalized-cut mask, ncut-mask.png, at the photo's size (default: off; it "
        "finds nothing with DINOv2's keys). A ResNet, which has no attention, needs it: only img.png, ncut-mask.png "
        "and ncut-overlay.png are written, the cut running on its grid instead of the keys",
    )
    _add_preprocessing_arguments(attention, keep_aspect=False)
    add_weights_arguments(attention)
    add_grid_layer_argument(attention, "the normalized cut runs on (--ncut)")
    add_runtime_arguments(attention, batch_size=DEFAULT_BATCH_SIZE)
    attention.set_defaults(func=_attention)


def _register_seg_eval(subparsers: argparse._SubParsersAction) -> None:
    """`dino seg-eval`: the Jaccard of the masks on a labelled dataset."""
    evaluate = subparsers.add_parser(
        "seg-eval",
        help="Jaccard of foreground, attention or normalized-cut masks on PASCAL VOC12 (or DAVIS foreground)",
        description="The paper's Jaccard (Fig. 4): for each ground-truth object, the best IoU over the "
        "candidate masks (each head's, for --method attention --heads best), averaged over the objects of an "
        "image, then over images. Writes OUT/results.json (score, method settings and protocol) and "
        "OUT/per_image.csv. The paper's protocol: --method attention --no-keep-aspect --resolution input.",
    )
    _add_dataset_arguments(evaluate)
    _add_mask_method_arguments(evaluate)
    _add_preprocessing_arguments(evaluate, keep_aspect=True)
    add_weights_arguments(evaluate)
    add_grid_layer_argument(evaluate, "the normalized cut runs on (--method ncut)")
    add_runtime_arguments(evaluate, batch_size=DEFAULT_BATCH_SIZE, dtype="fp32")
    evaluate.set_defaults(func=_seg_eval)


def _add_dataset_arguments(evaluate: argparse.ArgumentParser) -> None:
    """Which ground truth `seg-eval` scores (VOC or DAVIS, split, subset) and where its results go."""
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--voc", type=Path, help="VOC2012 folder (JPEGImages, SegmentationObject, …)")
    source.add_argument(
        "--davis", type=Path, help="DAVIS folder (2017 layout); each frame's non-zero ids are one foreground object"
    )
    evaluate.add_argument(
        "--out", required=True, type=output_folder, help="output folder for results.json and per_image.csv"
    )
    evaluate.add_argument("--split", default="val", help="split list to evaluate (default: %(default)s)")
    evaluate.add_argument(
        "--masks",
        choices=["object", "class"],
        default="object",
        help="VOC ground truth: SegmentationObject instances or SegmentationClass classes (default: %(default)s)",
    )
    evaluate.add_argument(
        "--every", type=positive_int, default=5, help="DAVIS: score every N-th frame (default: %(default)s)"
    )
    evaluate.add_argument("--limit", type=positive_int, help="score only the first N images (quick checks)")


def _add_mask_method_arguments(evaluate: argparse.ArgumentParser) -> None:
    """How `seg-eval` makes its candidate masks and compares them with the ground truth."""
    evaluate.add_argument(
        "--method",
        choices=MASK_METHODS,
        default="diffusion",
        help="diffusion: one foreground mask, the mean [CLS] attention diffused over the patch graph, refined "
        "on the photo (DAVIS-2016 dev, default DINOv2 ViT-S/14: 62.8); attention: thresholded [CLS] attention, "
        "the paper's (best head per object: 45.0, mean map: 39.0); ncut: normalized cut of the last layer's "
        "keys, TokenCut (0.0: DINOv2's uncentred keys are all alike), or of a ResNet's grid features, the one "
        "method for a ResNet, which has no attention (default: %(default)s; docs/segmentation.md)",
    )
    evaluate.add_argument(
        "--resolution",
        choices=["photo", "input"],
        default="photo",
        help="compare masks with the labels at the photo's own size, or at the network input's like the paper "
        "(default: %(default)s)",
    )
    evaluate.add_argument(
        "--heads",
        choices=["best", "merged", "mean"],
        default="best",
        help="attention masks scored: best = every head, best per object (paper); merged = union of the heads' "
        "masks; mean = threshold of the mean-over-heads map (default: %(default)s)",
    )
    _add_threshold_argument(evaluate)
    evaluate.add_argument(
        "--void",
        choices=["count", "ignore"],
        default="count",
        help="VOC void (255) pixels: count = predictions on void are false positives (authors' code); "
        "ignore = left out of the IoU (default: %(default)s)",
    )
    evaluate.add_argument("--tau", type=float, default=NCUT_TAU, help="ncut edge threshold (default: %(default)s)")
    evaluate.add_argument(
        "--eps", type=positive_float, default=NCUT_EPS, help="ncut non-edge weight (default: %(default)s)"
    )
