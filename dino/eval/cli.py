"""``dino knn``: weighted k-NN evaluation of a backbone on class-subfolder folders (SPEC §8)."""

from __future__ import annotations

import argparse
import json

from dino.atomic import atomic_write_json
from dino.cli import add_runtime_arguments, add_weights_arguments, backbone_from_args
from dino.eval.knn import DEFAULT_KS, DEFAULT_TEMPERATURE, run_knn

__all__ = ["register"]


def _knn(args: argparse.Namespace) -> int:
    model = backbone_from_args(args)
    results = run_knn(
        model,
        args.train,
        args.val,
        ks=args.nb_knn,
        temperature=args.temperature,
        cache_dir=args.cache_dir,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    rows = [{"k": r.k, "top1": r.top1, "top5": r.top5} for r in results]
    for row in rows:
        print(f"{row['k']}-NN: top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}")
    if args.out:
        atomic_write_json(args.out, {"weights": args.weights, "temperature": args.temperature, "results": rows})
        print(f"wrote {args.out}")
    else:
        print(json.dumps(rows))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``knn`` verb."""
    parser = subparsers.add_parser(
        "knn",
        help="weighted k-NN accuracy of frozen [CLS] features (SPEC §8)",
        description="Weighted k-NN classification (DINO protocol: resize 256 / crop 224, L2-normalised [CLS], "
        "top-k cosine neighbours weighted exp(sim/T)). TRAIN and VAL are folders with one subfolder per class.",
    )
    parser.add_argument("--train", required=True, help="bank folder: TRAIN/<class>/<image>")
    parser.add_argument("--val", required=True, help="query folder with the same class subfolders")
    parser.add_argument(
        "--nb-knn", type=int, nargs="+", default=list(DEFAULT_KS), help="values of k (default: %(default)s)"
    )
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="T (default: %(default)s)")
    parser.add_argument("--cache-dir", help="save/load features as CACHE_DIR/{train,val}.npy (+ .labels.npy)")
    parser.add_argument("--out", help="write the results as JSON")
    add_weights_arguments(parser)
    add_runtime_arguments(parser, batch_size=64)
    parser.set_defaults(func=_knn)
