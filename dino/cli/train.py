"""``dino train``: DINO pretraining on a folder of images, alone or under torchrun."""

from __future__ import annotations

import argparse
import os
import re
import sys

from dino.cli.arguments import output_folder
from dino.models.architectures import RESNET_ARCHITECTURES
from dino.train.config import METHODS, TRAINABLE_ARCHS, available_presets, config_to_dict, load_config

__all__ = ["register"]

# A config override as written on the command line: section.field=value (or field=value).
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)?=")


def _is_override(text: str) -> bool:
    return bool(_OVERRIDE.match(text)) and not os.path.exists(text)


def _recipe(args: argparse.Namespace) -> str | None:
    """The preset to start from: the one given; with neither --preset nor --config, the reference recipe of the
    method and backbone asked for (DenseCL: densecl_r50, SPEC §23; DINO with a ResNet: resnet50, SPEC §24), which
    the dataclass defaults (the ViT-S/16 recipe) are not."""
    if args.preset or args.config:
        return args.preset
    if args.method == "densecl":
        return "densecl_r50"
    if args.arch in RESNET_ARCHITECTURES:
        return "resnet50"
    return None


def _run(args: argparse.Namespace) -> int:
    # `--data-path A B optim.lr=1e-3` hands the override to --data-path (it takes several values): take back
    # every KEY=VALUE that is not an existing file or folder.
    data_path = [path for path in args.data_path or [] if not _is_override(path)]
    overrides = list(args.overrides) + [path for path in args.data_path or [] if _is_override(path)]
    if data_path:
        overrides.append(f"run.data_path=[{', '.join(repr(p) for p in data_path)}]")
    if args.output_dir:
        overrides.append(f"run.output_dir={args.output_dir!r}")
    if args.no_progress:
        overrides.append("run.progress=false")
    # --method and --arch come first, so that a KEY=VALUE override still has the last word.
    chosen = [f"run.method={args.method}"] if args.method else []
    chosen += [f"model.arch={args.arch}"] if args.arch else []
    preset = _recipe(args)
    if preset != args.preset:
        asked = " ".join(f"--{name} {value}" for name, value in (("method", args.method), ("arch", args.arch)) if value)
        note = f"{asked} without --preset or --config: the reference recipe, preset {preset}"
        print(f"dino train: {note}", file=sys.stderr)
    config = load_config(preset, args.config, chosen + overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    from dino.train.trainer import NonFiniteLossError, train

    try:
        result = train(config, resume=not args.no_resume)
    except NonFiniteLossError as error:
        print(f"dino train: error: {error}", file=sys.stderr)
        return 1
    if result.completed:
        state = f"finished at step {result.global_step}"
    elif config.run.max_steps and result.global_step >= config.run.max_steps:
        # run.max_steps is a global step: the same command again would train nothing.
        state = (
            f"stopped at step {result.global_step} (run.max_steps={config.run.max_steps}: raise run.max_steps or "
            "drop it to continue)"
        )
    else:
        state = f"stopped early at step {result.global_step} (resume with the same command)"
    if result.checkpoint is not None:
        print(f"{state}; checkpoint: {result.checkpoint}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` verb."""
    parser = subparsers.add_parser(
        "train",
        help="DINO or DenseCL self-supervised pretraining (one process, or torchrun for many GPUs/nodes)",
        description="Train a ViT or a ResNet with DINO, or a ResNet with DenseCL, on a folder of images (searched "
        "recursively; labels ignored). "
        "Defaults are the reference ViT-S/16 recipe; settings come from a preset, a YAML file and key=value "
        "overrides, in that order. The same command runs under 'torchrun --nproc_per_node=N -m dino.cli train ...'. "
        "A run resumes exactly from OUTPUT_DIR/checkpoint.pth when it exists.",
        epilog="examples:\n"
        "  dino train --preset cpu_small --data-path photos/ --output-dir runs/tiny\n"
        "  dino train --arch resnet50 --data-path imagenet/train --output-dir runs/rn50\n"
        "  dino train --method densecl --preset densecl_cpu_small --data-path photos/ --output-dir runs/densecl\n"
        "  torchrun --nproc_per_node=8 -m dino.cli train --data-path imagenet/train --output-dir runs/vits16 "
        "optim.batch_size_per_gpu=64\n"
        "  dino train --config my.yaml optim.lr=1e-3 loss.teacher_temp=0.07 run.max_steps=100",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-path", nargs="+", help="image folders or files (sets run.data_path)")
    parser.add_argument(
        "--output-dir", type=output_folder, help="checkpoints, logs and config.yaml go here (sets run.output_dir)"
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="dino (the default) or densecl (sets run.method); densecl without --preset/--config trains with the "
        "reference recipe, preset densecl_r50",
    )
    parser.add_argument(
        "--arch",
        choices=TRAINABLE_ARCHS,
        help="the backbone (sets model.arch); a ResNet without --preset/--config trains with the reference ResNet-50 "
        "recipe, preset resnet50",
    )
    parser.add_argument("--preset", choices=available_presets(), help="a shipped recipe applied before --config")
    parser.add_argument("--config", help="a YAML file with sections model/crops/loss/optim/run")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3 run.max_steps=50"
    )
    parser.set_defaults(func=_run)
