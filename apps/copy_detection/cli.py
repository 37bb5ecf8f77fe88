"""``dino copy-detect``: Copydays evaluation, benchmark generation, indexing and copy finding (SPEC §12)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from apps.copy_detection.defaults import (
    CALIBRATIONS,
    DEFAULT_CANDIDATES,
    DEFAULT_VERIFIER,
    STRONG_PER_ORIGINAL,
    TOP_K,
    VERIFIERS,
)
from dino.cli.arguments import (
    INDEX_WEIGHTS,
    add_on_error_argument,
    add_runtime_arguments,
    add_weights_arguments,
    backbone_for_index,
    backbone_from_args,
    cosine_threshold,
    non_negative_int,
    output_file,
    positive_int,
    report_skipped,
    runtime_from_args,
)
from dino.search.defaults import COPY_DETECTION_SIZE

if TYPE_CHECKING:
    from apps.copy_detection.find import CopyHit

__all__ = ["register"]

# SPEC §12: the reference extracts copy-detection features in batches of 16 with ViT-B/8 (the released weights).
EVAL_BATCH_SIZE = 16
REFERENCE_WEIGHTS = "dino_vitb8"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dino copy-detect {eval, make-benchmark, index, find}``."""
    parser = subparsers.add_parser(
        "copy-detect",
        help="copy detection: Copydays evaluation, benchmark generator, index and copy finder",
        description="Copy detection with DINO descriptors ([CLS] ⊕ GeM(p=4) of a 320×320 resize, optionally "
        "PCA-whitened, SPEC §12). With a ResNet (--weights dino_resnet50, random:resnet50, a ResNet file) the "
        "descriptor is GeM(p=4) over its layer4 grid, whitened the same way.",
    )
    verbs = parser.add_subparsers(dest="copy_verb", metavar="SUBCOMMAND", required=True)
    _register_eval(verbs)
    _register_make_benchmark(verbs)
    _register_index(verbs)
    _register_find(verbs)


def _add_whitening_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--whitening",
        metavar="DIR|FILE",
        help=f"PCA-whiten the {what}: a folder of images disjoint from them to fit the whitening on (SPEC §12; "
        "the paper uses 20k YFCC100M images), or a whitening .npz saved by --save-whitening",
    )
    parser.add_argument(
        "--centered-whitening",
        action="store_true",
        help="fit textbook PCA-whitening on the centred covariance instead of the reference's uncentred "
        "second moment FᵀF/n",
    )


# ---------------------------------------------------------------------------- eval
def _register_eval(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "eval",
        help="mAP per Copydays block (strong, each JPEG quality, each crop level)",
        description="The Copydays protocol: every block of ROOT (original, strong, jpegqual/<q>, crops/<c>; "
        "sizes read from the folders) queries the originals plus optional distractors; each block's score is "
        "the mean Holidays AP over the top 20. Also prints the similarity threshold that best separates copy "
        "pairs from non-copy pairs (to pass to 'copy-detect find --threshold'), and with --verify the minimum of "
        "verified matches that does (for 'copy-detect find --verify --min-inliers').",
    )
    parser.add_argument("--copydays", required=True, metavar="ROOT", help="the Copydays-layout folder")
    parser.add_argument("--distractors", metavar="DIR", help="images added to the database (paper: 10k YFCC100M)")
    _add_whitening_arguments(parser, "descriptors")
    parser.add_argument(
        "--save-whitening", type=output_file, metavar="FILE", help="save the fitted whitening here (.npz)"
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=COPY_DETECTION_SIZE,
        help="square resize side in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=TOP_K, help="results scored per query (default: %(default)s)"
    )
    parser.add_argument(
        "--verify",
        choices=VERIFIERS,
        help="also calibrate 'copy-detect find --verify' with this verifier: the minimum of verified matches "
        "with the best F1, each query verifying its --candidates nearest database images as find does",
    )
    parser.add_argument(
        "--candidates",
        type=positive_int,
        default=DEFAULT_CANDIDATES,
        help="with --verify, database images verified per query (default: %(default)s, as find)",
    )
    parser.add_argument("--out", type=output_file, metavar="FILE", help="write the results as JSON")
    add_weights_arguments(parser, default=REFERENCE_WEIGHTS)
    add_runtime_arguments(parser, batch_size=EVAL_BATCH_SIZE, dtype="fp32")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from apps.copy_detection.evaluate import evaluate_copydays, format_table, load_or_fit_whitening
    from dino.atomic import atomic_write_json
    from dino.search.descriptors import DescriptorExtractor, DescriptorRecipe

    if args.save_whitening and not args.whitening:
        raise ValueError("--save-whitening needs --whitening, the images to fit it on")
    model = backbone_from_args(args)
    runtime = runtime_from_args(args)
    recipe = DescriptorRecipe.copy_detection(args.size, backbone=model)
    whitening = None
    if args.whitening:
        extractor = DescriptorExtractor(model, recipe, runtime=runtime)
        whitening = load_or_fit_whitening(args.whitening, extractor, centered=args.centered_whitening)
        if args.save_whitening:
            whitening.save(args.save_whitening)
    report = evaluate_copydays(
        args.copydays,
        model,
        distractors=args.distractors,
        whitening=whitening,
        recipe=recipe,
        top_k=args.top_k,
        verify=args.verify,
        candidates=args.candidates,
        runtime=runtime,
    )
    print(format_table(report))
    if args.out:
        atomic_write_json(args.out, report.as_dict())
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- make-benchmark
def _register_make_benchmark(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "make-benchmark",
        help="build a Copydays-layout benchmark from your own photos",
        description="Attack each original photo the Copydays way and write ROOT/original, ROOT/jpegqual/<q> "
        "(q = 3 … 75), ROOT/crops/<c> (c = 10 … 80 % of the area removed), ROOT/strong (rotation, blur, colour "
        "change, overlaid text and patches, noise, print-and-scan) and ROOT/benchmark.json (sources and edits). "
        "The same photos and seed give byte-identical files.",
    )
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="photo files or folders")
    parser.add_argument("--out", required=True, metavar="ROOT", help="benchmark folder to create")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the attacks (default: 0)")
    parser.add_argument(
        "--originals", type=positive_int, help="photos used as originals (default: all not reserved for whitening)"
    )
    parser.add_argument("--distractors-out", metavar="DIR", help="write the photos not used as originals here")
    parser.add_argument("--whitening-out", metavar="DIR", help="write --whitening-count photos here")
    parser.add_argument("--whitening-count", type=non_negative_int, default=0, help="photos reserved for whitening")
    parser.add_argument(
        "--strong-per-original",
        type=non_negative_int,
        default=STRONG_PER_ORIGINAL,
        help="strong copies per original (default: %(default)s)",
    )
    parser.add_argument("--max-side", type=positive_int, help="downscale photos whose longer side exceeds this")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_make_benchmark)


def _make_benchmark(args: argparse.Namespace) -> int:
    from apps.copy_detection.generate import make_benchmark

    summary = make_benchmark(
        args.images,
        args.out,
        seed=args.seed,
        originals=args.originals,
        distractors_out=args.distractors_out,
        whitening_out=args.whitening_out,
        whitening_count=args.whitening_count,
        strong_per_original=args.strong_per_original,
        max_side=args.max_side,
        progress=not args.no_progress,
    )
    print(f"wrote {summary.root}: {summary.originals} originals, {summary.strong} strong copies")
    for name, folder in (("distractors", summary.distractors), ("whitening images", summary.whitening)):
        if folder is not None:
            print(f"wrote {name} to {folder}")
    return 0


# ---------------------------------------------------------------------------- index and find
def _register_index(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "index",
        help="index a photo collection for 'copy-detect find'",
        description="Describe every image (files or folders, searched recursively) with the copy-detection "
        "descriptor and save a FAISS index with a manifest (and the whitening, if any).",
    )
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, metavar="INDEX", help="index folder to write")
    _add_whitening_arguments(parser, "collection")
    parser.add_argument(
        "--factory", default="Flat", help="FAISS index_factory string, e.g. HNSW32 (default: %(default)s, exact)"
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=COPY_DETECTION_SIZE,
        help="square resize side in pixels (default: %(default)s)",
    )
    add_on_error_argument(parser, "the index")
    add_weights_arguments(parser)
    add_runtime_arguments(parser, batch_size=EVAL_BATCH_SIZE)
    parser.set_defaults(func=_index)


def _index(args: argparse.Namespace) -> int:
    from apps.copy_detection.find import build_copy_index
    from dino.features import SkippedImage
    from dino.search.index import MANIFEST_FILE

    index = build_copy_index(
        args.images,
        backbone_from_args(args),
        out=args.out,
        whitening=args.whitening,
        centered_whitening=args.centered_whitening,
        factory=args.factory,
        size=args.size,
        on_error="skip" if args.on_error == "skip" else "raise",
        runtime=runtime_from_args(args),
    )
    print(f"wrote {args.out}: {len(index)} images")
    skipped = [SkippedImage(i, path, reason) for i, (path, reason) in enumerate(index.skipped.items())]
    report_skipped(skipped, len(index) + len(skipped), index.path / MANIFEST_FILE)
    return 0


def _register_find(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "find",
        help="which indexed images are copies of these images",
        description="Print, for each query image, the indexed images whose similarity reaches the threshold, "
        "best first; with --verify, those of the nearest candidates with enough geometrically verified local "
        "matches, most matches first. The query file itself is left out when it is indexed. The backbone is the "
        "one recorded in the index (its weights source) unless --weights is given.",
    )
    parser.add_argument("images", nargs="+", help="query image files or folders")
    parser.add_argument("--index", required=True, help="index folder written by 'copy-detect index'")
    parser.add_argument(
        "--threshold",
        type=cosine_threshold,
        help="minimum cosine similarity of a copy (default: calibrated for the index's backbone on the project's "
        "photo benchmark, unwhitened: "
        + ", ".join(f"{name} {c.threshold:g}" for name, c in CALIBRATIONS.items())
        + "; other weights get the default backbone's: run 'copy-detect eval' on a benchmark and use its max_f1 "
        "threshold)",
    )
    parser.add_argument(
        "--candidates",
        type=positive_int,
        default=DEFAULT_CANDIDATES,
        help="nearest images examined per query (default: %(default)s)",
    )
    parser.add_argument(
        "--verify",
        nargs="?",
        const=DEFAULT_VERIFIER,
        choices=VERIFIERS,
        help="decide by geometrically verified local-feature matches instead of the similarity threshold: finds "
        "partial copies (a spliced region, an object in another scene) that a global descriptor misses; slower, "
        "and reads the candidates' image files. 'sift': OpenCV SIFT keypoints; 'dino': the backbone's "
        "middle-block patch tokens, a ViT's only (default: %(const)s)",
    )
    parser.add_argument(
        "--min-inliers",
        type=non_negative_int,
        help="with --verify, minimum verified matches of a copy (default: calibrated like --threshold, per "
        "backbone and verifier: "
        + "; ".join(
            f"{name} " + ", ".join(f"{kind} {count}" for kind, count in c.min_inliers.items())
            for name, c in CALIBRATIONS.items()
        )
        + ")",
    )
    parser.add_argument("--out", type=output_file, metavar="FILE", help="also write the copies as JSON")
    add_weights_arguments(parser, default=None, default_means=INDEX_WEIGHTS)
    add_runtime_arguments(parser, batch_size=EVAL_BATCH_SIZE)
    parser.set_defaults(func=_find)


def _find(args: argparse.Namespace) -> int:
    from apps.copy_detection.find import calibrated_min_inliers, calibration_for, find_copies
    from dino.atomic import atomic_write_json, refuse_overwriting_inputs
    from dino.data.io import list_images
    from dino.search.index import ImageIndex

    index = ImageIndex.load(args.index)
    model = backbone_for_index(args, index)
    queries = list_images(args.images, required=True)
    if args.out:
        refuse_overwriting_inputs(args.out, queries)
    threshold = calibration_for(model).threshold if args.threshold is None else args.threshold
    min_inliers = args.min_inliers
    if args.verify and min_inliers is None:
        min_inliers = calibrated_min_inliers(model, args.verify)
    copies = find_copies(
        queries,
        index,
        model,
        threshold=threshold,
        candidates=args.candidates,
        verify=args.verify,
        min_inliers=min_inliers,
        runtime=runtime_from_args(args),
    )
    results = []
    for query, hits in zip(queries, copies, strict=True):
        print(f"{query}: {len(hits)} likely cop{'y' if len(hits) == 1 else 'ies'}")
        for hit in hits:
            verified = f"  {hit.inliers:4d} matches" if hit.inliers is not None else ""
            print(f"  {hit.score:.4f}{verified}  {hit.path}")
        results.append({"query": str(query), "copies": [_hit_json(hit) for hit in hits]})
    if args.out:
        decision = {"verify": args.verify, "min_inliers": min_inliers} if args.verify else {"threshold": threshold}
        atomic_write_json(args.out, {"index": args.index, **decision, "results": results})
        print(f"wrote {args.out}")
    return 0


def _hit_json(hit: CopyHit) -> dict:
    verified = {"inliers": hit.inliers} if hit.inliers is not None else {}
    return {"path": hit.path, "score": hit.score, **verified}
