"""The layout rules of docs/ARCHITECTURE.md, read from the source: layers, no import cycle, no option bags, short
functions. Each rule is checked on the real tree and on a small made-up case that breaks it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = ("dino", "apps", "demo")
MAX_FUNCTION_LINES = 80

# The core's layers, lowest first: a part imports only parts of lower layers (and itself). The package root
# `dino` holds only the version.
CORE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("dino", "dino.lazy", "dino.atomic", "dino.checksums"),
    ("dino.data",),
    ("dino.runtime", "dino.layers"),
    ("dino.models", "dino.distributed"),
    ("dino.hub",),
    ("dino.checkpoint",),
    ("dino.features",),
    ("dino.search", "dino.eval", "dino.train"),
    ("dino.cli",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for package in LIBRARY
        for path in sorted((REPO / package).rglob("*.py"))
    }


def imported_modules(tree: ast.Module, known: set[str]) -> set[str]:
    """The modules of `known` that `tree` imports anywhere (functions included), leaving out what only type
    checkers read (``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return found & known


def import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: imported_modules(tree, known) - {name} for name, tree in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def core_layer(module: str) -> int:
    """The layer of a core module: that of the longest part name it starts with (the root ``dino`` only as
    itself, so a new top-level module must be given a layer)."""
    best, layer_of_best = "", -1
    for layer, parts in enumerate(CORE_LAYERS):
        for part in parts:
            inside = module == part or (part != "dino" and module.startswith(part + "."))
            if inside and len(part) > len(best):
                best, layer_of_best = part, layer
    if layer_of_best < 0:
        raise AssertionError(f"{module} belongs to no layer of CORE_LAYERS: add it there and to ARCHITECTURE.md")
    return layer_of_best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports against the layering: the core importing an app or the demo, or a lower core layer importing a
    higher one; an app importing another app or the demo."""
    wrong = []
    for module, targets in graph.items():
        top = module.split(".")[0]
        for target in sorted(targets):
            target_top = target.split(".")[0]
            if top == "dino":
                if target_top != "dino" or core_layer(target) > core_layer(module):
                    wrong.append(f"{module} -> {target}")
            elif top == "apps" and (
                target_top == "demo" or (target_top == "apps" and target.split(".")[1] != module.split(".")[1])
            ):
                wrong.append(f"{module} -> {target}")
    return wrong


def long_functions(modules: dict[str, ast.Module]) -> list[str]:
    return [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in modules.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def option_bags(modules: dict[str, ast.Module]) -> list[str]:
    """Public functions taking ``**kwargs`` that are untyped or typed ``Any``/``object`` (``Unpack[SomeTypedDict]``
    names its keys and types, so it is no bag)."""
    bags = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.args.kwarg is None:
                continue
            annotation = node.args.kwarg.annotation
            typed = annotation is not None and ast.unparse(annotation) not in ("Any", "object", "typing.Any")
            if not node.name.startswith("_") and not typed:
                bags.append(f"{name}.{node.name}(**{node.args.kwarg.arg})")
    return bags


@pytest.fixture(scope="module")
def modules() -> dict[str, ast.Module]:
    return library_modules()


def test_no_import_cycle(modules) -> None:
    assert cycles(import_graph(modules)) == []


def test_imports_follow_the_layers(modules) -> None:
    assert layer_violations(import_graph(modules)) == []


def test_no_function_over_80_lines(modules) -> None:
    assert long_functions(modules) == []


def test_no_option_bags_in_public_signatures(modules) -> None:
    assert option_bags(modules) == []


def test_the_checks_catch_what_they_look_for() -> None:
    graph = {"dino.checkpoint": {"dino.hub.formats"}, "dino.hub.formats": {"dino.checkpoint"}, "dino.atomic": set()}
    assert cycles(graph) == [["dino.checkpoint", "dino.hub.formats"]]
    assert layer_violations(graph) == ["dino.hub.formats -> dino.checkpoint"]
    with pytest.raises(AssertionError, match="dino.newpart belongs to no layer"):
        core_layer("dino.newpart")
    assert layer_violations({"apps.retrieval.cli": {"apps.copy_detection.find"}, "dino.features": {"apps.x"}}) == [
        "apps.retrieval.cli -> apps.copy_detection.find",
        "dino.features -> apps.x",
    ]
    made_up = {
        "m": ast.parse(
            "def f(**options: Any): pass\n"
            "def g(**options: Unpack[ViTOptions]): pass\n"
            "def _h(**kw): pass\n"
            "def k(**kw): pass\n"
            "def long():\n" + "    x = 1\n" * 80
        )
    }
    assert option_bags(made_up) == ["m.f(**options)", "m.k(**kw)"]
    assert long_functions(made_up) == ["m.long: 81 lines"]
    assert imported_modules(
        ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\ndef f():\n    import b\n"),
        {"a", "b"},
    ) == {"b"}
