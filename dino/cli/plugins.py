"""The apps' verbs, found through the ``dino.commands`` entry-point group: the core never imports an app."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

__all__ = ["ENTRY_POINT_GROUP", "plugin_names", "plugins"]

ENTRY_POINT_GROUP = "dino.commands"


def plugins() -> list[tuple[str, Callable[[argparse._SubParsersAction], None]]]:
    """The installed ``register`` functions; one that fails to import is reported and skipped so a broken
    app cannot take the whole command down."""
    loaded = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            loaded.append((point.name, point.load()))
        except ImportError as error:
            print(f"dino: warning: commands of {point.name!r} unavailable ({error})", file=sys.stderr)
    return loaded


def plugin_names() -> list[str]:
    """The names of the installed command groups."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
