"""``dino knn`` (weighted k-NN, SPEC §8) and ``dino linear`` (linear probe, SPEC §9) on class-subfolder folders."""

from __future__ import annotations

import argparse
import json

from dino.atomic import atomic_write_json
from dino.cli.arguments import (
    add_runtime_arguments,
    add_weights_arguments,
    backbone_from_args,
    output_file,
    output_folder,
    positive_float,
    positive_int,
    runtime_from_args,
)
from dino.eval.defaults import BASE_LR, DEFAULT_KS, DEFAULT_TEMPERATURE, LINEAR_INPUTS, N_LAST_BLOCKS

__all__ = ["register"]


def _knn(args: argparse.Namespace) -> int:
    from dino.checkpoint import weights_record
    from dino.distributed import init_distributed
    from dino.eval.knn import run_knn

    context = init_distributed(args.device)
    model = backbone_from_args(args)
    results = run_knn(
        model,
        args.train,
        args.val,
        ks=args.nb_knn,
        temperature=args.temperature,
        cache_dir=args.cache_dir,
        runtime=runtime_from_args(args),
    )
    if not context.is_main:
        return 0
    rows = [{"k": r.k, "top1": r.top1, "top5": r.top5} for r in results]
    capped = sorted({k for k in args.nb_knn if k not in {r.k for r in results}})
    if capped:
        print(f"note: k = {', '.join(map(str, capped))} exceed the bank; capped at {max(r.k for r in results)}")
    for row in rows:
        print(f"{row['k']}-NN: top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}")
    if args.out:
        record = {**weights_record(model), "temperature": args.temperature}
        atomic_write_json(args.out, {**record, "results": rows})
        print(f"wrote {args.out}")
    else:
        print(json.dumps(rows))
    return 0


def _linear(args: argparse.Namespace) -> int:
    from dino.checkpoint import weights_record
    from dino.eval.linear import run_linear
    from dino.models.backbone import is_resnet

    model = backbone_from_args(args)
    result = run_linear(
        model,
        args.train,
        args.val,
        epochs=args.epochs,
        lr=args.lr,
        n_last_blocks=args.n_last_blocks,
        avgpool=args.avgpool_patchtokens,
        linear_input=args.linear_input,
        output_dir=args.output_dir,
        runtime=runtime_from_args(args),
    )
    print(f"best top-1 {result.best_top1:.2f} at epoch {result.best_epoch}")
    if args.output_dir:
        atomic_write_json(
            f"{args.output_dir}/linear_results.json",
            {
                **weights_record(model),
                "linear_input": {"layout": "resnet_pooled", "dim": model.embed_dim}
                if is_resnet(model)
                else {
                    "layout": args.linear_input,
                    "n_last_blocks": args.n_last_blocks or N_LAST_BLOCKS,
                    "avgpool_patchtokens": args.avgpool_patchtokens,
                },
                "best_top1": result.best_top1,
                "best_epoch": result.best_epoch,
                "history": result.history,
            },
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``knn`` and ``linear`` verbs."""
    parser = subparsers.add_parser(
        "knn",
        help="weighted k-NN accuracy of frozen [CLS] features (SPEC §8)",
        description="Weighted k-NN classification (DINO protocol: resize 256 / crop 224, L2-normalised [CLS], "
        "or a ResNet's 2048-d average-pooled feature (SPEC §24; --weights dino_resnet50, random:resnet50, a "
        "ResNet file), top-k cosine neighbours weighted exp(sim/T)). TRAIN and VAL are folders with one subfolder "
        "per class. "
        "Under 'torchrun --nproc_per_node=N -m dino.cli knn ...' feature extraction is split across processes.",
    )
    parser.add_argument("--train", required=True, help="bank folder: TRAIN/<class>/<image>")
    parser.add_argument("--val", required=True, help="query folder with the same class subfolders")
    parser.add_argument(
        "--nb-knn", type=positive_int, nargs="+", default=list(DEFAULT_KS), help="values of k (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature", type=positive_float, default=DEFAULT_TEMPERATURE, help="T (default: %(default)s)"
    )
    parser.add_argument(
        "--cache-dir", type=output_folder, help="save/load features as CACHE_DIR/{train,val}.npy (+ .labels.npy)"
    )
    parser.add_argument("--out", type=output_file, help="write the results as JSON")
    add_weights_arguments(parser)
    add_runtime_arguments(parser, batch_size=64, dtype="fp32")
    parser.set_defaults(func=_knn)

    linear = subparsers.add_parser(
        "linear",
        help="linear probe on frozen features (SPEC §9)",
        description="Train a linear classifier on a frozen backbone: [CLS] of the last N blocks (ViT-S recipe; "
        "ViT-B: --n-last-blocks 1 --avgpool-patchtokens; a ResNet such as --weights dino_resnet50: its 2048-d "
        "average-pooled feature, SPEC §24), SGD momentum 0.9, wd 0, cosine lr, RandomResizedCrop "
        "224 + flip for training, resize 256 / crop 224 for validation; reports the best validation top-1.",
    )
    linear.add_argument("--train", required=True, help="TRAIN/<class>/<image>")
    linear.add_argument("--val", required=True, help="validation folder with the same class subfolders")
    linear.add_argument("--epochs", type=positive_int, default=100, help="(default: %(default)s)")
    linear.add_argument(
        "--lr", type=positive_float, default=BASE_LR, help="lr for a batch of 256 (default: %(default)s)"
    )
    linear.add_argument(
        "--n-last-blocks",
        type=positive_int,
        help=f"[CLS] tokens of this many last blocks, concatenated (default: {N_LAST_BLOCKS}; ViT only)",
    )
    linear.add_argument(
        "--avgpool-patchtokens",
        action="store_true",
        help="append the last block's mean patch token; needs --n-last-blocks 1, as the reference's ViT-B recipe "
        "(ViT only)",
    )
    linear.add_argument(
        "--linear-input",
        choices=LINEAR_INPUTS,
        default="dino",
        help="dino: the reference's input (above); dinov2: [CLS] of the last N blocks followed by the last "
        "block's mean patch token, registers excluded, as DINOv2's linear evaluation (default: %(default)s; a ResNet "
        "takes only dino)",
    )
    linear.add_argument(
        "--output-dir", type=output_folder, help="write linear_weights.pth (released layout) and linear_results.json"
    )
    add_weights_arguments(linear)
    add_runtime_arguments(linear, batch_size=128, max_tokens=False, dtype="fp32")
    linear.set_defaults(func=_linear)
