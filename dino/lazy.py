"""Package namespaces that name their public objects without importing the modules behind them (PEP 562).

``from dino.data import open_image`` keeps working, but importing ``dino.data.constants`` no longer loads
torchvision through ``dino/data/__init__.py``: the command line builds its parser without PyTorch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for `package`, whose attribute ``name`` lives in module ``exports[name]``.

    Each object is imported on first access and then kept in the package's namespace.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
