"""The import graph of advls: no cycle anywhere, and imports only along the layers.

Every module under ``src/advls`` is parsed (not imported) and every import it holds counts:
module-level, inside functions, under ``if TYPE_CHECKING:``. ``from advls.x import y`` is an
edge to ``advls.x.y`` when that is a module, else to ``advls.x``. A package's ``__init__``
importing its own submodules is an ordinary edge; a submodule importing back the package
whose ``__init__`` imports it closes a cycle.

The layers (``docs/architecture.md``, "Layers"), lowest first; a module may import its own
layer and those below, never one above.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
ROOT = "advls"

#: Each top-level part of advls (a module or a package) by layer, lowest first.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        {
            "advls",
            "losses",
            "models",
            "data",
            "atomic",
            "checkpoint",
            "limits",
            "locks",
            "outputs",
            "external",
            "workers",
            "sharding",
        }
    ),
    frozenset({"train", "defences", "attacks", "certify"}),
    frozenset({"evaluate", "theory"}),
    frozenset({"sweep", "store", "suites"}),
    frozenset({"report", "reproduce", "audit"}),
    frozenset({"cli", "__main__"}),
)


def module_files(source: Path, root: str = ROOT) -> dict[str, Path]:
    """Every module of the package ``root`` under ``source``, by dotted name."""
    modules = {}
    for path in sorted((source / root).rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module a dotted name lives in: its longest prefix that is a module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, modules: Mapping[str, Path]
) -> Iterator[str]:
    """The modules one import statement of ``module`` imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's package, one level up per extra dot
            is_package = modules[module].name == "__init__.py"
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = package[: len(package) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        # ``from advls.x import y`` imports the module advls.x.y if there is one, else advls.x.
        names = [
            f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
            for alias in node.names
        ]
    for name in names:
        target = _resolve(name, modules)
        if target is not None and target != module:
            yield target


def import_graph(source: Path, root: str = ROOT) -> dict[str, set[str]]:
    """For every module of ``root``, the modules of ``root`` it imports (anywhere in it)."""
    modules = module_files(source, root)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(node, module, modules)
        }
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None when the graph has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:  # depth first, without recursion
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif following in on_path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                on_path.add(following)
                stack.append(iter(sorted(graph.get(following, ()))))
    return None


def layer_of(module: str) -> int | None:
    """The layer of a module of advls, by its top-level part; None when none is assigned."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    return next((index for index, layer in enumerate(LAYERS) if top in layer), None)


def layering_breaks(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import from a module to one in a higher layer, as ``importer -> imported``."""
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if (layer_of(target) or 0) > (layer_of(module) or 0)
    ]


# --------------------------------------------------------------------------- the package
GRAPH = import_graph(SOURCE)


def test_the_graph_sees_the_package() -> None:
    assert {"advls.evaluate", "advls.evaluate.run", "advls.attacks"} <= set(GRAPH)
    assert "advls.evaluate.masking" in GRAPH["advls.evaluate.run"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_part_of_the_package_has_a_layer() -> None:
    unplaced = sorted({module for module in GRAPH if layer_of(module) is None})
    assert not unplaced, f"add these to LAYERS in {Path(__file__).name}: {unplaced}"


def test_imports_follow_the_layers() -> None:
    breaks = layering_breaks(GRAPH)
    assert not breaks, "imports against the layers:\n" + "\n".join(breaks)


# --------------------------------------------------------------------------- the checker itself
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    source = _tree(
        tmp_path,
        {
            "advls/__init__.py": "",
            "advls/pkg/__init__.py": "from advls.pkg.sub import thing\n",
            "advls/pkg/sub.py": "thing = 1\n",
            "advls/pkg/other.py": "from . import sub\nfrom .sub import thing\n",
            "advls/late.py": "def f():\n    import advls.pkg.other\n",
            "advls/typed.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from advls.pkg import sub, thing\n"
            ),
            "advls/outside.py": "import json\nfrom torch import nn\n",
        },
    )
    graph = import_graph(source)
    assert graph["advls.pkg"] == {"advls.pkg.sub"}
    assert graph["advls.pkg.other"] == {"advls.pkg.sub"}  # ``from . import sub``: the module
    assert graph["advls.late"] == {"advls.pkg.other"}
    assert graph["advls.typed"] == {"advls.pkg", "advls.pkg.sub"}
    assert graph["advls.outside"] == set()
    assert find_cycle(graph) is None


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        (  # a submodule importing back the package whose __init__ imports it
            {
                "advls/__init__.py": "",
                "advls/pkg/__init__.py": "from advls.pkg.a import x\n",
                "advls/pkg/a.py": "from advls.pkg import y\nx = 1\n",
            },
            ["advls.pkg", "advls.pkg.a", "advls.pkg"],
        ),
        (  # through a function-level and a TYPE_CHECKING import
            {
                "advls/__init__.py": "",
                "advls/a.py": "def f():\n    from advls.b import g\n",
                "advls/b.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from advls import c\n",
                "advls/c.py": "import advls.a\n",
            },
            ["advls.a", "advls.b", "advls.c", "advls.a"],
        ),
    ],
)
def test_cycles_are_found_and_printed(
    tmp_path: Path, files: dict[str, str], cycle: list[str]
) -> None:
    assert find_cycle(import_graph(_tree(tmp_path, files))) == cycle


def test_an_import_against_the_layers_is_named() -> None:
    graph = {
        "advls.attacks.core": {"advls.losses", "advls.evaluate.results"},
        "advls.evaluate.run": {"advls.attacks"},
        "advls.sweep.job": {"advls.report.cells", "advls.evaluate"},
        "advls.report.build": {"advls.cli"},
    }
    assert layering_breaks(graph) == [
        "advls.attacks.core -> advls.evaluate.results",
        "advls.report.build -> advls.cli",
        "advls.sweep.job -> advls.report.cells",
    ]
