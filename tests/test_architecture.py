"""The import graph of the five packages: no circles, and every arrow between packages points down the layers.

    harness  <-  model  <-  train  <-  eval  <-  reproduce        (README.md, "Architecture")

A module may import its own package and the packages below it, nothing above. Every import counts: at module level,
inside functions (lazy imports), under `if TYPE_CHECKING`, and in entry points (`__main__.py`). A "module:attribute"
or dotted-module string naming a module of these packages (a registry's lazy target, resolved with importlib) counts
as an arrow for the layering too: a lazy string must not reach up either. It does not count for circles: a registry
names the modules that fill it (model.families -> model.lavit.family -> model.families), and that loop is the
registry's, not an import circle.

The graph is read from the source with `ast` (nothing is imported), so this test takes well under a second.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("harness", "model", "train", "eval", "reproduce")  # bottom to top
RANK = {package: i for i, package in enumerate(LAYERS)}
MODULE_STRING = re.compile(r"^(?:%s)(?:\.\w+)+(?::[\w.]+)?$" % "|".join(LAYERS))  # "a.b" or "a.b:attr"

Edges = dict[str, set[tuple[str, int]]]  # module -> {(imported module, line)}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the five packages (a package is its __init__.py)."""
    modules = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules (`a.b.attr` -> `a.b`), or None (outside the packages)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> tuple[Edges, Edges]:
    """(imports, string references): every `import` / `from ... import` anywhere in a module, and every string
    constant that names one of our modules."""
    imports: Edges = defaultdict(set)
    strings: Edges = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `from . import x`, `from ..a import b`
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # `from a import b` runs a/__init__.py, and b may be a submodule: both are arrows
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
                target = _known(node.value.partition(":")[0], modules)
                if target and target != name:
                    strings[name].add((target, node.lineno))
            for target in targets:
                known = _known(target, modules)
                if known and known != name:
                    imports[name].add((known, node.lineno))
    return imports, strings


def circles(edges: Edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    graph = {a: {b for b, _ in targets} for a, targets in edges.items()}

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _where(module: str, line: int, target: str, modules: dict[str, Path], root: Path) -> str:
    return f"{modules[module].relative_to(root)}:{line}: {module} -> {target}"


def up_arrows(edges: Edges, modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    """'file:line: a.b -> c.d' for every edge from a package to a package above it."""
    rank = lambda module: RANK[module.split(".")[0]]  # noqa: E731
    bad = sorted((a, line, b) for a, targets in edges.items() for b, line in targets if rank(b) > rank(a))
    return [_where(a, line, b, modules, root) for a, line, b in bad]


def circle_edges(component: list[str], edges: Edges, modules: dict[str, Path], root: Path = ROOT) -> list[str]:
    """'file:line: a -> b' for every edge inside one circle."""
    members = set(component)
    inside = sorted((a, line, b) for a in component for b, line in edges.get(a, ()) if b in members)
    return [_where(a, line, b, modules, root) for a, line, b in inside]


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    modules = module_files()
    return modules, *import_graph(modules)


def test_no_import_circles(graph):
    modules, imports, _ = graph
    found = circles(imports)
    report = "\n\n".join(f"circle {' <-> '.join(c)}:\n  " + "\n  ".join(circle_edges(c, imports, modules)) for c in found)
    assert not found, f"{len(found)} import circle(s):\n{report}"


def test_every_import_points_down_the_layers(graph):
    modules, imports, _ = graph
    bad = up_arrows(imports, modules)
    assert not bad, f"imports from a package to one above it ({' <- '.join(LAYERS)}):\n  " + "\n  ".join(bad)


def test_lazy_string_targets_point_down_the_layers_too(graph):
    modules, _, strings = graph
    bad = up_arrows(strings, modules)
    assert not bad, "module strings (lazy importlib targets) naming a package above their own:\n  " + "\n  ".join(bad)


def test_the_checks_see_function_level_imports_circles_and_up_arrows(tmp_path):
    """The checker on a made-up tree: a lazy import inside a function that points up, and a two-module circle."""
    (tmp_path / "harness").mkdir()
    (tmp_path / "model").mkdir()
    for package in LAYERS[2:]:
        (tmp_path / package).mkdir()
    (tmp_path / "harness" / "__init__.py").write_text("")
    (tmp_path / "harness" / "a.py").write_text("def f():\n    from model.b import g\n    return g\n")
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "b.py").write_text("from . import c\nTARGET = 'eval.x:y'\n")
    (tmp_path / "model" / "c.py").write_text("import model.b\n")
    (tmp_path / "eval" / "__init__.py").write_text("")
    (tmp_path / "eval" / "x.py").write_text("")
    modules = module_files(tmp_path)
    imports, strings = import_graph(modules)
    assert circles(imports) == [["model.b", "model.c"]]
    assert circle_edges(["model.b", "model.c"], imports, modules, tmp_path) == [
        "model/b.py:1: model.b -> model.c", "model/c.py:1: model.c -> model.b"]  # fmt: skip
    assert up_arrows(imports, modules, tmp_path) == ["harness/a.py:2: harness.a -> model.b"]  # inside a function
    assert up_arrows(strings, modules, tmp_path) == ["model/b.py:2: model.b -> eval.x"]
