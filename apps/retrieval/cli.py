"""``dino search``: index image folders, query them, keep them up to date, fit a whitening, and run the
Revisited Oxford/Paris evaluation (SPEC §13)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from apps.retrieval.revisitop import DATASETS
from dino.cli.arguments import (
    INDEX_WEIGHTS,
    add_on_error_argument,
    add_runtime_arguments,
    add_weights_arguments,
    backbone_for_index,
    backbone_from_args,
    output_file,
    positive_int,
    report_skipped,
    runtime_from_args,
)
from dino.search.defaults import DEFAULT_CHECKPOINT_EVERY, DEFAULT_FACTORY, POOLINGS, RETRIEVAL_SIZE

if TYPE_CHECKING:
    from dino.models.backbone import Backbone
    from dino.search.descriptors import DescriptorRecipe
    from dino.search.index import ImageIndex

__all__ = ["register"]

# SPEC §13: the reference extracts retrieval features one image at a time.
EVAL_BATCH_SIZE = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dino search {index, query, update, whiten, eval}``."""
    parser = subparsers.add_parser(
        "search",
        help="image search: index folders, query, update, whitening, ROxford/RParis evaluation",
        description="Image search with DINO global descriptors in a FAISS index. The default descriptor is "
        "the reference retrieval one (SPEC §13): [CLS] of a thumbnail fitted in 224×224, single scale, no "
        "whitening; scores are cosine similarities.",
    )
    verbs = parser.add_subparsers(dest="search_verb", metavar="SUBCOMMAND", required=True)
    _register_index(verbs)
    _register_query(verbs)
    _register_update(verbs)
    _register_whiten(verbs)
    _register_eval(verbs)


# ---------------------------------------------------------------------------- shared options
def _add_descriptor_arguments(parser: argparse.ArgumentParser, whitening: bool = True) -> None:
    group = parser.add_argument_group("descriptor")
    group.add_argument(
        "--pooling",
        choices=POOLINGS,
        help="cls: [CLS] token (the reference; a ResNet's average-pooled feature); gem: GeM (p=4) over the patch "
        "tokens (a ResNet's layer4 grid); cls+gem: both concatenated (default: cls for a ViT, gem for a ResNet such "
        "as --weights dino_resnet50)",
    )
    group.add_argument(
        "--size",
        type=positive_int,
        default=RETRIEVAL_SIZE,
        help="images are shrunk to fit SIZE×SIZE, aspect kept, never enlarged (reference: 224 for ROxford, "
        "512 for RParis; default: %(default)s)",
    )
    group.add_argument(
        "--multiscale", action="store_true", help="average descriptors at scales 1, 1/√2 and 1/2 (reference RParis)"
    )
    if whitening:
        group.add_argument(
            "--whitening", metavar="FILE", help="apply a PCA-whitening fitted by 'dino search whiten' (.npz)"
        )


def _recipe(args: argparse.Namespace, model: Backbone) -> DescriptorRecipe:
    from dino.search.descriptors import DescriptorRecipe

    return DescriptorRecipe.retrieval(args.size, args.multiscale, backbone=model, pooling=args.pooling)


def _add_inputs(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("inputs", nargs="+", metavar="PATH", help=f"{what}: image files or folders")
    parser.add_argument("--no-recursive", action="store_true", help="do not look into subfolders")


def _add_index_weights(parser: argparse.ArgumentParser) -> None:
    add_weights_arguments(parser, default=None, default_means=INDEX_WEIGHTS)


def _on_error(args: argparse.Namespace) -> str:
    """--on-error as the Python API's `on_error`."""
    return "skip" if args.on_error == "skip" else "raise"


def _report_skipped(index: ImageIndex, total: int) -> None:
    from dino.features import SkippedImage
    from dino.search.index import MANIFEST_FILE

    skipped = [SkippedImage(i, path, reason) for i, (path, reason) in enumerate(index.skipped.items())]
    report_skipped(skipped, total, index.path / MANIFEST_FILE if index.path is not None else "the index")


# ---------------------------------------------------------------------------- index
def _register_index(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "index",
        help="describe every image of folders into a FAISS index",
        description="Describe every image under PATH (searched recursively) and write an index folder OUT "
        "(index.faiss, manifest.json with the backbone, descriptor recipe and each file's sha256, and "
        "whitening.npz when whitened), atomically. An interrupted run resumes where it stopped when rerun "
        "with the same options. Under 'torchrun --nproc-per-node N -m dino.cli search index …' each process "
        "describes a shard (one GPU each) and rank 0 writes the index; OUT must be on a filesystem all processes "
        "share.",
    )
    _add_inputs(parser, "images to index")
    parser.add_argument("--out", required=True, metavar="INDEX", help="index folder to write (replaced if it exists)")
    parser.add_argument(
        "--factory",
        default=DEFAULT_FACTORY,
        help="FAISS index_factory string: Flat (exact, default), IVF4096,Flat, HNSW32, IVF4096,PQ32 … (trained "
        "on the collection when needed)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help="save partial descriptors every N batches so an interrupted run can resume (default: %(default)s)",
    )
    add_on_error_argument(parser, "the index")
    _add_descriptor_arguments(parser)
    add_weights_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(func=_index)


def _index(args: argparse.Namespace) -> int:
    from apps.retrieval.indexing import index_folders
    from dino.search.descriptors import load_descriptor_whitening

    model = backbone_from_args(args)
    recipe = _recipe(args, model)
    whitening = load_descriptor_whitening(args.whitening, model, recipe) if args.whitening else None
    index = index_folders(
        args.inputs,
        args.out,
        model,
        recipe,
        whitening,
        factory=args.factory,
        recursive=not args.no_recursive,
        checkpoint_every=args.checkpoint_every,
        on_error=_on_error(args),
        runtime=runtime_from_args(args),
    )
    if index is not None:
        print(f"indexed {len(index)} images ({index.dim}-d, {index.factory}) into {index.path}")
        _report_skipped(index, len(index) + len(index.skipped))
    return 0


# ---------------------------------------------------------------------------- query
def _register_query(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "query",
        help="find the indexed images most similar to query images",
        description="Describe each query image exactly as the index was built (its recipe and whitening) and "
        "print its K best matches: rank (1 = best), cosine similarity and path. --weights defaults to the "
        "weights recorded in the index; other weights are refused.",
    )
    parser.add_argument("queries", nargs="+", metavar="IMAGE", help="query image files (or folders of them)")
    parser.add_argument("--index", required=True, metavar="INDEX", help="index folder from 'dino search index'")
    parser.add_argument("-k", "--top-k", type=positive_int, default=10, help="matches per query (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--sheet", type=output_file, metavar="PNG", help="also write a contact sheet: each query beside its matches"
    )
    parser.add_argument(
        "--search-params",
        metavar="P",
        help="FAISS search parameters of approximate indexes, e.g. nprobe=32 (IVF) or efSearch=128 (HNSW)",
    )
    _add_index_weights(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(func=_query)


def _query(args: argparse.Namespace) -> int:
    from apps.retrieval.sheet import save_contact_sheet
    from dino.atomic import refuse_overwriting_inputs
    from dino.data.io import list_images
    from dino.search.index import ImageIndex, search_images

    index = ImageIndex.load(args.index)
    model = backbone_for_index(args, index)
    queries = [str(path) for path in list_images(args.queries, recursive=False)]
    if args.sheet:
        refuse_overwriting_inputs(args.sheet, queries)
    hits = search_images(
        index, queries, model, k=args.top_k, params=args.search_params, runtime=runtime_from_args(args)
    )
    if args.json:
        results = [
            {
                "query": query,
                "hits": [{"rank": hit.rank + 1, "score": round(hit.score, 6), "path": hit.path} for hit in row],
            }
            for query, row in zip(queries, hits, strict=True)
        ]
        print(json.dumps(results, indent=2))
    else:
        for query, row in zip(queries, hits, strict=True):
            print(query)
            for hit in row:
                print(f"  {hit.rank + 1:>4}  {hit.score:.4f}  {hit.path}")
    if args.sheet:
        save_contact_sheet(queries, hits, args.sheet)
        print(f"wrote {args.sheet}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- update
def _register_update(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "update",
        help="bring an index in line with its folders (add new, re-describe changed, drop deleted images)",
        description="Compare the images now under PATH with the index by content (sha256): new files are "
        "described and added, changed ones re-described, missing ones removed, unchanged ones kept without "
        "re-extraction; images skipped before as unusable are tried again. The index is rewritten atomically. "
        "--weights defaults to those recorded in the index.",
    )
    _add_inputs(parser, "the indexed folders as they are now")
    parser.add_argument("--index", required=True, metavar="INDEX", help="index folder from 'dino search index'")
    add_on_error_argument(parser, "the index")
    _add_index_weights(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(func=_update)


def _update(args: argparse.Namespace) -> int:
    from apps.retrieval.indexing import update_folders
    from dino.search.index import ImageIndex

    index = ImageIndex.load(args.index)
    model = backbone_for_index(args, index)
    report = update_folders(
        index,
        args.inputs,
        model,
        recursive=not args.no_recursive,
        on_error=_on_error(args),
        runtime=runtime_from_args(args),
    )
    print(
        f"{args.index}: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged" + (f", {report.skipped} skipped" if report.skipped else "")
    )
    _report_skipped(index, report.added + report.updated + report.unchanged + report.skipped)
    return 0


# ---------------------------------------------------------------------------- whiten
def _register_whiten(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "whiten",
        help="fit a PCA-whitening on a separate set of images",
        description="Fit a PCA-whitening (SPEC §12: mean-centred, eigenvalues of the uncentred second moment "
        "floored at max·1e-5, power 0.5) on the raw descriptors of images DISJOINT from the ones you will "
        "index, and save it (.npz) for 'dino search index --whitening' and 'dino search eval --whitening'. "
        "Use the same backbone and descriptor options there.",
    )
    _add_inputs(parser, "images to fit the whitening on")
    parser.add_argument("--out", required=True, type=output_file, metavar="FILE", help="whitening file to write (.npz)")
    parser.add_argument("--dim", type=positive_int, help="output dimension (default: the descriptor dimension)")
    parser.add_argument(
        "--centered", action="store_true", help="use the centred covariance (textbook PCA) instead of FᵀF/n"
    )
    _add_descriptor_arguments(parser, whitening=False)
    add_weights_arguments(parser)
    add_runtime_arguments(parser)
    parser.set_defaults(func=_whiten)


def _whiten(args: argparse.Namespace) -> int:
    from apps.retrieval.indexing import fit_whitening

    model = backbone_from_args(args)
    whitening = fit_whitening(
        args.inputs,
        args.out,
        model,
        _recipe(args, model),
        dim=args.dim,
        centered=args.centered,
        recursive=not args.no_recursive,
        runtime=runtime_from_args(args),
    )
    print(
        f"wrote {args.out}: {whitening.in_dim}-d -> {whitening.out_dim}-d, fitted on "
        f"{whitening.metadata['images']} images, energy kept {whitening.energy_kept:.4f}"
    )
    if whitening.metadata["images"] <= whitening.out_dim:
        print(
            f"warning: {whitening.metadata['images']} images cannot estimate {whitening.out_dim} directions; the "
            "rest only amplify noise. Fit on many more images than dimensions (the paper: 20k), or pass a --dim "
            "below the image count.",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------------- eval
def _register_eval(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "eval",
        help="Revisited Oxford / Paris mAP (Easy, Medium, Hard) and mP@1,5,10",
        description="The eval_image_retrieval.py protocol (SPEC §13): describe the database and the 70 queries "
        "(whole, not cropped to their box, as the reference), rank by cosine similarity and score with revisitop's "
        "mAP and mP@k, junk images ignored. Paper settings: ROxford --size 224; RParis --size 512 --multiscale.",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help=f"{' or '.join(DATASETS)} (or any dataset in the same layout)",
    )
    parser.add_argument(
        "--root",
        default=os.environ.get("DINO_DATA_DIR"),
        help="folder holding NAME/gnd_NAME.pkl and NAME/jpg/<id>.jpg (default: $DINO_DATA_DIR)",
    )
    parser.add_argument(
        "--crop-queries", action="store_true", help="crop queries to their bounding box, as standard revisitop"
    )
    parser.add_argument("--out", type=output_file, metavar="FILE", help="results JSON (default: retrieval_NAME.json)")
    _add_descriptor_arguments(parser)
    add_weights_arguments(parser)
    add_runtime_arguments(parser, batch_size=EVAL_BATCH_SIZE, dtype="fp32")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from apps.retrieval.evaluate import evaluate_retrieval, format_results
    from dino.atomic import atomic_write_json
    from dino.search.descriptors import load_descriptor_whitening

    if args.root is None:
        raise ValueError("pass --root (the folder holding the revisitop datasets) or set DINO_DATA_DIR")
    model = backbone_from_args(args)
    recipe = _recipe(args, model)
    whitening = load_descriptor_whitening(args.whitening, model, recipe) if args.whitening else None
    results = evaluate_retrieval(
        args.root,
        args.dataset,
        model,
        recipe,
        whitening,
        crop_queries=args.crop_queries,
        runtime=runtime_from_args(args),
    )
    print(format_results(results))
    out = args.out or f"retrieval_{args.dataset}.json"
    atomic_write_json(out, results)
    print(f"wrote {out}")
    return 0
