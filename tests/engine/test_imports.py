"""The package's import graph: no cycles, and no edge pointing the wrong way.

Parsed from the source with :mod:`ast` (nothing is imported), so the test sees
every module, including ones a test run would never load.

Layers, lowest first: ``eac.kernels`` (numpy/opencv building blocks) →
``eac.engine`` (the runtime) → ``eac.engine.cli`` (the command) ; ``eac.export``
and ``eac.bench`` sit beside the CLI and may use the runtime. The runtime outside
the CLI never imports export or bench; kernels import nothing of eac but kernels.
"""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"engine": "eac.engine", "export": "eac.export", "kernels": "eac.kernels", "bench": "eac.bench"}
#: Third-party imports the runtime (engine, kernels) may make at all, anywhere.
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime", "cv2", "onnx", "tqdm"}
#: Optional extras the runtime may import inside functions only (dataset runs: parquet, ray; figures: plot).
OPTIONAL_LAZY = {"pyarrow", "ray", "matplotlib"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = module.split(".")
        if not is_package:
            anchor = anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if base else a.name for a in node.names]


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of one file, as dotted names."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    top: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, inside_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = inside_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            target = lazy if inside_function else top
            if isinstance(child, ast.Import):
                target.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                target.update(_resolve(module, child, path.name == "__init__.py"))
            visit(child, nested)

    visit(tree, False)
    return top, lazy


def _graph() -> dict[str, tuple[set[str], set[str]]]:
    graph = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            graph[_module_name(path)] = _imports(path)
    return graph


GRAPH = _graph()


def _eac_module(name: str) -> str | None:
    """The eac module an import refers to (an imported name inside a module maps to the module)."""
    while name:
        if name in GRAPH:
            return name
        name = name.rpartition(".")[0]
    return None


def test_the_walk_found_the_packages():
    assert {"eac.engine.cli", "eac.engine.methods.base", "eac.kernels.shapley", "eac.export.classifier"} <= set(GRAPH)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of module-level imports, or None. A package and its own submodules importing each other
    (``pkg/__init__`` importing ``pkg.mod`` which imports ``pkg.base``) is how packages work, not a cycle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in itertools.pairwise(cycle)):
                    return cycle
            elif nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_no_import_cycles_at_module_level():
    edges = {m: {t for t in (_eac_module(i) for i in top) if t and t != m} for m, (top, _) in GRAPH.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_a_cycle_would_be_caught():
    assert find_cycle({"eac.engine.a": {"eac.engine.b"}, "eac.engine.b": {"eac.engine.a"}}) is not None
    assert find_cycle({"eac.engine.m": {"eac.engine.m.x"}, "eac.engine.m.x": {"eac.engine.m"}}) is None


def violations(module: str, top: set[str], lazy: set[str]) -> list[str]:
    """Wrong-way imports of one module (see the module docstring)."""
    found = []
    in_cli = module.startswith("eac.engine.cli")
    for name in sorted(top | lazy):
        root = name.split(".")[0]
        if root == "eac":
            target = _eac_module(name) or name
            if module.startswith("eac.kernels") and not target.startswith("eac.kernels"):
                found.append(f"{module} (kernels) imports {target}")
            elif target.startswith(("eac.export", "eac.bench")):
                if not in_cli:
                    found.append(f"{module} (runtime) imports {target}")
                elif name not in lazy:
                    found.append(f"{module} imports {target} at module level; import it inside the command")
        elif root in OPTIONAL_LAZY:
            if name not in lazy:
                found.append(f"{module} imports the optional {name} at module level; import it where it is used")
        elif root not in RUNTIME_THIRD_PARTY and root not in sys.stdlib_module_names:
            found.append(f"{module} imports {name}, which the runtime may not use")
    return found


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith(("eac.engine", "eac.kernels"))))
def test_runtime_never_imports_upwards_or_torch(module):
    assert violations(module, *GRAPH[module]) == []


def test_wrong_way_edges_would_be_caught():
    """The checker itself, on made-up import lists."""
    assert violations("eac.engine.explainer", {"eac.export.classifier.export_classifier"}, set())
    assert violations("eac.engine.evaluator", set(), {"eac.bench.harness"})  # lazy does not excuse the runtime
    assert violations("eac.engine.cli.explain", {"eac.bench.cli.register"}, set())  # the CLI must be lazy
    assert violations("eac.engine.cli.explain", set(), {"eac.bench.cli.register"}) == []
    assert violations("eac.kernels.shapley", {"eac.engine.errors.ExplainError"}, set())
    assert violations("eac.engine.sam", set(), {"torch"})
    assert violations("eac.engine.dataset", {"pyarrow.parquet"}, set())
    assert violations("eac.engine.dataset", set(), {"pyarrow.parquet"}) == []
