"""No import cycles inside neutron_backend, and the report's data, renderings and cost model in separate modules.

The import graph is read from the source with `ast`: every `import` and `from ... import` of a neutron_backend module,
wherever it is (module level, inside a function, under `if TYPE_CHECKING:`), is an edge. A cycle through any of them
is a cycle a reader has to untangle, whether or not Python happens to tolerate it at run time. A module's parent
packages are not counted: Python runs them first whoever imports the module.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "neutron_backend"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The neutron_backend modules `name` imports (a `from package import module` counts as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    # Importing a module runs its parent packages first whoever imports it: those are not edges of this module.
    ancestors = {".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 1)}
    return found - ancestors


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return components


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module == goal:
            return True
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return False


def test_the_reader_sees_a_known_edge():
    # The test would pass vacuously if it found no imports at all.
    graph = _graph()
    assert "neutron_backend.cost_model" in graph["neutron_backend.report_data"]
    assert "neutron_backend.report_data" in graph["neutron_backend.report"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_neutron_backend():
    assert _cycles(_graph()) == []


def test_report_data_renderings_and_cost_model_are_layered():
    graph = _graph()
    renderings = ("neutron_backend.report_text", "neutron_backend.report_html", "neutron_backend.report_csv")
    lower = ("neutron_backend.report_data", "neutron_backend.cost_model", "neutron_backend.layer_profile",
             "neutron_backend.memory_fit", "neutron_backend.memory_plan", "neutron_backend.layers")
    for module in lower:
        for rendering in (*renderings, "neutron_backend.report"):
            assert not _reaches(graph, module, rendering), f"{module} imports the rendering {rendering}"
    assert not _reaches(graph, "neutron_backend.cost_model", "neutron_backend.report_data")


@pytest.mark.parametrize("module", ["neutron_backend.report", "neutron_backend.report_data",
                                    "neutron_backend.report_text", "neutron_backend.report_html",
                                    "neutron_backend.report_csv", "neutron_backend.cost_model",
                                    "neutron_backend.layer_profile", "neutron_backend.memory_fit",
                                    "neutron_backend.memory_plan", "neutron_backend.layers"])
def test_each_module_imports(module: str):
    assert importlib.import_module(module).__name__ == module
