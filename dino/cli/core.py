"""The core verbs ``dino info``, ``dino features`` and ``dino export``: arguments, then one library call."""

from __future__ import annotations

import argparse
import json
import platform
from importlib import metadata
from pathlib import Path

import dino
from dino.cli.arguments import (
    add_file_loading_arguments,
    add_on_error_argument,
    add_runtime_arguments,
    add_weights_arguments,
    backbone_from_args,
    output_file,
    positive_int,
    report_skipped,
    runtime_from_args,
)
from dino.cli.plugins import plugin_names
from dino.data.constants import PREPROCESSING
from dino.hub.releases import DEFAULT_WEIGHTS, weights_provenance

__all__ = ["register"]


def _info(args: argparse.Namespace) -> int:
    import numpy as np
    import PIL
    import torch

    from dino.checkpoint import resolve_weights
    from dino.runtime import pick_device

    report: dict[str, object] = {
        "dino": dino.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "device": str(pick_device()),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        import faiss

        report["faiss"] = f"{faiss.__version__} ({'GPU' if hasattr(faiss, 'StandardGpuResources') else 'CPU'} build)"
    except ImportError:
        report["faiss"] = None
    try:  # its version without importing it (torchvision's import alone takes a second)
        report["torchvision"] = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        report["torchvision"] = None
    default = resolve_weights(DEFAULT_WEIGHTS)
    report["weights_default"] = f"{default}: {weights_provenance(default)}"
    if args.weights is not None:
        report.update(_backbone_report(args))
    report["command_groups"] = plugin_names()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(map(len, report))
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _backbone_report(args: argparse.Namespace) -> dict[str, object]:
    """What `dino info --weights W` says of a backbone: its network, its outputs' sizes, where its weights come
    from and their checksum (what index manifests record)."""
    from dino.checkpoint import model_identity
    from dino.models.backbone import is_resnet

    model = backbone_from_args(args)
    identity = model_identity(model)
    if is_resnet(model):
        network = (
            f"{model.arch}: {model.embed_dim}-d average-pooled feature (the k-NN / linear / search embedding); "
            f"dense grid {model.grid_layer}, stride {model.patch_size}, {model.grid_dim} channels; no attention"
        )
    else:
        network = (
            f"{identity['arch']}/{model.patch_size}: {model.embed_dim}-d [CLS] and patch tokens, {len(model.blocks)} "
            f"blocks, {model.num_register_tokens} registers"
        )
    return {
        "backbone": network,
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M",
        "weights": identity["weights"],
        "weights_provenance": identity["provenance"],
        "weights_sha256": identity["sha256"],
    }


def _features(args: argparse.Namespace) -> int:
    from dino.features import extract_features_to_file

    model = backbone_from_args(args)
    written = extract_features_to_file(
        args.images,
        args.out,
        model,
        what=args.what,
        preprocessing=args.preprocess,
        size=args.size,
        on_error=args.on_error,
        runtime=runtime_from_args(args),
    )
    sidecar = written.path.with_suffix(".json")
    print(f"wrote {written.path} ({written.rows} images) and {sidecar}")
    report_skipped(written.skipped, written.rows + len(written.skipped), sidecar)
    return 0


def _export(args: argparse.Namespace) -> int:
    from dino.checkpoint import export_backbone
    from dino.runtime import torch_dtype

    digest = export_backbone(
        args.checkpoint,
        args.out,
        checkpoint_key=args.checkpoint_key,
        dtype=torch_dtype(args.dtype),
        weights_only=not args.unsafe_load,
    )
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB, sha256 {digest})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info``, ``features`` and ``export``."""
    info = subparsers.add_parser(
        "info",
        help="versions, device and FAISS build; with --weights, the backbone",
        description="Print versions, device and FAISS build; with --weights (a ViT, or a ResNet such as "
        "dino_resnet50 or random:resnet50), the backbone's network, output sizes, provenance and checksum.",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    add_weights_arguments(info, default=None, default_means="none: versions only")
    info.set_defaults(func=_info)

    features = subparsers.add_parser(
        "features",
        help="extract [CLS] or patch-token features of images to .npy",
        description="Extract frozen DINO features of images (files or folders, searched recursively) into a "
        ".npy array, with a .json sidecar listing the images in row order. With a ResNet (--weights "
        "dino_resnet50, random:resnet50, a ResNet file) cls is the average-pooled feature and patch its layer4 "
        "grid (layer3 with --patch-size 16).",
    )
    features.add_argument("images", nargs="+", help="image files or folders")
    features.add_argument(
        "--out", required=True, type=output_file, help="output .npy file (the image list goes to a .json beside it)"
    )
    features.add_argument(
        "--what",
        choices=["cls", "patch"],
        default="cls",
        help="[CLS] vectors (N, D) or patch grids (N, h, w, D); a ResNet's pooled feature or dense grid",
    )
    features.add_argument(
        "--preprocess",
        choices=PREPROCESSING,
        default="knn",
        help="knn: resize 256 + center crop 224 (k-NN protocol); square: SIZE×SIZE; short-side: short side = SIZE; "
        "thumbnail: fit in SIZE×SIZE (retrieval protocol) (default: %(default)s)",
    )
    features.add_argument("--size", type=positive_int, help="crop/resize size of the chosen preprocessing")
    add_on_error_argument(features, "the array")
    add_weights_arguments(features)
    add_runtime_arguments(features)
    features.set_defaults(func=_features)

    export = subparsers.add_parser(
        "export",
        help="write a checkpoint's backbone as a small backbone-only state dict",
        description="Write the backbone (teacher by default) of any weights --weights accepts as a backbone-only "
        "state dict in the released layout, e.g. to ship a `dino train` result; a ResNet (DINO ResNet-50 full "
        "checkpoint, DenseCL training checkpoint, …) in torchvision's keys without fc, as dino_resnet50's release. "
        "Prints the file's SHA-256.",
    )
    export.add_argument("checkpoint", help="a `dino train` checkpoint, an official full checkpoint, or any weights")
    export.add_argument("out", type=output_file, help="output .pth file (written atomically)")
    export.add_argument(
        "--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="stored precision (default: %(default)s)"
    )
    add_file_loading_arguments(export)
    export.set_defaults(func=_export)
