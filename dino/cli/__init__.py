"""The ``dino`` command: one front door, one verb per task.

Core verbs live in :mod:`dino.cli.core`, :mod:`dino.cli.evaluate` and :mod:`dino.cli.train`; apps add theirs
through the ``dino.commands`` entry-point group (:mod:`dino.cli.plugins`): each entry point names a
``register(subparsers)`` function that adds one or more subparsers and sets ``func`` on them, so the core never
imports an app. Each verb is argument parsing plus one call into a Python function. Building the parser loads
no PyTorch (``dino --help`` answers at once); a verb imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import dino
from dino.cli import core, evaluate, train
from dino.cli.plugins import plugins
from dino.hub.releases import WeightsUnavailableError

__all__ = ["USER_ERRORS", "build_parser", "main"]

# Errors a user can fix from the message alone: printed on one line, without a traceback. The project's own
# (CheckpointError, ImageLoadError, TokenBudgetError, IndexMismatchError, …) are ValueErrors.
USER_ERRORS = (
    WeightsUnavailableError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``dino`` parser, with the core verbs and every installed app's verbs."""
    parser = argparse.ArgumentParser(
        prog="dino",
        description="DINO self-supervised ViT features: training, evaluation and applications.",
        epilog="Run 'dino VERB --help' for the options of a verb.",
    )
    parser.add_argument("--version", action="version", version=f"dino {dino.__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for register in (core.register, train.register, evaluate.register):
        register(subparsers)
    for _, register in plugins():
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
