"""The code's structure, checked from its source (``ast``; nothing is imported):

- no import cycle between packages, nor between the modules of one package (every import
  counts: module level, inside functions and under ``TYPE_CHECKING``; ``from pkg import
  submodule`` is an edge to the submodule);
- ``asyncopd/config`` reaches nothing of ``sim``, ``calibration`` or ``asyncopd/planner``, and
  the catalogues and the controller stay at the bottom;
- a first-party import inside a function body says why, on its line or in the block of
  imports just above it (a comment with "lazy": it keeps torch / ray / a slow import out of a
  module that must stay light);
- no module is over 400 lines unless its docstring says why ("over 400 lines").
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("asyncopd", "sim", "calibration")


def _modules() -> dict[str, Path]:
    out = {}
    for top in FIRST_PARTY:
        for path in (REPO / top).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else ""


def _imports(tree: ast.AST) -> list[tuple[str, ast.stmt]]:
    """(imported first-party module, the statement) for every import in ``tree``."""
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            targets = subs if len(subs) == len(node.names) else [node.module, *subs]
        for target in targets:
            if target.split(".")[0] in FIRST_PARTY and _resolve(target):
                out.append((_resolve(target), node))
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "asyncopd" and len(parts) > 1 else parts[0]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _ in _imports(ast.parse(path.read_text())):
            if target != name:
                graph[name].add(target)
    return graph


def _cycles(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


GRAPH = _graph()
PACKAGES: dict[str, set[str]] = defaultdict(set)
for _a, _targets in GRAPH.items():
    for _b in _targets:
        if _package(_a) != _package(_b):
            PACKAGES[_package(_a)].add(_package(_b))


def _reach(package: str) -> set[str]:
    seen, todo = set(), [package]
    while todo:
        for nxt in PACKAGES.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle_between_packages() -> None:
    assert _cycles(sorted({_package(m) for m in MODULES}), PACKAGES) == []


def test_no_import_cycle_inside_a_package() -> None:
    assert _cycles(sorted(MODULES), GRAPH) == []


@pytest.mark.parametrize("package, forbidden", [
    ("asyncopd.config", {"sim", "calibration", "asyncopd.planner", "asyncopd.runtime", "asyncopd.backends"}),
    ("asyncopd.catalog", {"sim", "calibration", "asyncopd.config", "asyncopd.planner", "asyncopd.runtime"}),
    ("asyncopd.control", {"asyncopd.config", "sim", "calibration", "asyncopd.trace", "asyncopd.runtime"}),
    ("sim", {"calibration", "asyncopd.planner", "asyncopd.runtime", "asyncopd.backends"}),
    ("asyncopd.trace", {"sim", "calibration", "asyncopd.planner", "asyncopd.runtime"}),
])
def test_layers_point_one_way(package: str, forbidden: set[str]) -> None:
    assert not _reach(package) & forbidden, f"{package} reaches {sorted(_reach(package) & forbidden)}"


def _says_lazy(lines: list[str], node: ast.stmt) -> bool:
    """A comment with "lazy" on the import, or on the block of imports and comments just above it."""
    block = lines[node.lineno - 1:node.end_lineno]
    i = node.lineno - 2
    while i >= 0 and lines[i].strip().startswith(("from ", "import ", "#", "if ", "else")):
        block.append(lines[i])
        i -= 1
    return "lazy" in " ".join(block).lower()


def test_first_party_imports_inside_functions_say_why() -> None:
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for _, node in _imports(func):
                if not _says_lazy(lines, node):
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unexplained, sorted(set(unexplained))


def test_long_modules_say_why() -> None:
    long = []
    for name, path in MODULES.items():
        text = path.read_text()
        n = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > 400 and "over 400 lines" not in doc.lower():
            long.append(f"{path.relative_to(REPO)} ({n} lines)")
    assert not long, long


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """`asyncopd --help` (every command registered) loads no torch, ray, simpy, numpy or scipy."""
    import subprocess
    import sys

    code = ("import sys, asyncopd.cli; "
            "print(sorted(m for m in ('torch', 'ray', 'simpy', 'numpy', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
