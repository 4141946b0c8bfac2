"""The retrieval package has no import cycles, and each module of retrieval.index loads on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "retrieval"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The retrieval modules `path` imports (a `from PACKAGE import SUBMODULE` counts as the submodule)."""
    found = set()

    def visit(nodes, top: bool):
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue  # never runs
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "retrieval")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "retrieval":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in MODULES else node.module)
            inner = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
            nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if not (nested and top_level_only):
                visit(inner, top and not nested)

    visit(ast.parse(path.read_text()).body, True)
    return {m for m in found if m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return cycles


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "with-lazy-imports"])
def test_no_import_cycles(top_level_only):
    graph = {name: _imports(path, top_level_only) - {name} for name, path in MODULES.items()}
    assert _cycles(graph) == []


def test_index_modules_do_not_import_the_package_init():
    for name, path in MODULES.items():
        if name.startswith("retrieval.index.") or name == "retrieval.search":
            assert "retrieval.index" not in _imports(path, top_level_only=False), name


def test_every_index_module_imports_on_its_own_in_any_order():
    names = sorted(n for n in MODULES if n.startswith("retrieval.index") or n == "retrieval.search")
    for order in (names, names[::-1]):
        code = "import importlib\nfor m in %r: importlib.import_module(m)\n" % order
        code += "from retrieval.index import build_index, open_index, Manifest, sync_index\n"
        code += "from retrieval.search import open_index\n"
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
