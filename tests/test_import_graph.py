"""groupmood's modules import one way: no import cycle, counting imports inside functions.

Every ``import`` / ``from ... import`` statement of every module under ``src/groupmood`` is read with
:mod:`ast`, wherever it stands (module level, functions, methods, try blocks), except inside an
``if TYPE_CHECKING:`` block: those never run, so they cannot make an import cycle, and they let a module
name a type of a module above it in an annotation (``report`` naming ``pipeline.GroupResult``). Dynamic
imports (``importlib.import_module`` of a computed name) are not seen.

An import of a package is an edge to its ``__init__``; ``from pkg import name`` is an edge to the
submodule ``pkg.name`` where there is one, else to ``pkg``. A strongly connected component of more than
one module, or a module importing itself, fails the test with the cycle and the lines that make it.
"""
from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "groupmood"

#: An edge's source line, for the failure message: (path relative to src, line number).
Where = tuple[str, int]


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``'s name)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree``, skipping the body (not the ``else``) of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             known: Mapping[str, Path]) -> Iterator[str]:
    """The package-internal modules one import statement of ``module`` loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source not in known:
        return
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        yield sub if sub in known else source


def import_graph() -> dict[str, dict[str, Where]]:
    """module -> {imported module: where the first such import stands}, over groupmood's own modules."""
    known = _modules()
    graph: dict[str, dict[str, Where]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = graph.setdefault(module, {})
        for node in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                edges.setdefault(target, (str(path.relative_to(SRC)), node.lineno))
    return graph


def strongly_connected(graph: Mapping[str, Mapping[str, Where]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
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
                    work.append((child, iter(graph[child])))
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
                out.append(sorted(component))
    return out


def _cycle(graph: Mapping[str, Mapping[str, Where]], component: list[str]) -> list[str]:
    """One cycle through the component's first module (shortest, by breadth-first search), as its modules."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in graph[node]:
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{component} is not strongly connected")


def describe(graph: Mapping[str, Mapping[str, Where]], component: list[str]) -> str:
    """A component's modules and one cycle through them, each import with its file and line."""
    cycle = _cycle(graph, component)
    lines = [f"import cycle among {len(component)} module(s): {', '.join(component)}"]
    for a, b in zip(cycle, cycle[1:]):
        path, line = graph[a][b]
        lines.append(f"  {a} -> {b}    ({path}:{line})")
    return "\n".join(lines)


def test_graph_sees_the_package() -> None:
    """The graph covers the package and resolves relative imports (a sanity check of the parser)."""
    graph = import_graph()
    assert "groupmood.pipeline" in graph and "groupmood.models.registry" in graph
    assert "groupmood.errors" in graph["groupmood.weights"]  # from .errors import WeightsError
    assert "groupmood.models.registry" in graph["groupmood.models.faceapi"]  # from .registry import ...
    assert "groupmood.weights" in graph["groupmood.models.pretrained"]  # from .. import weights as store


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    assert not cycles, "\n\n".join(describe(graph, c) for c in cycles)


def test_model_modules_import_only_the_registry_heads_and_layers() -> None:
    """The model modules (those the catalog imports to register them) define nets only: they import the registry,
    the heads, the shared layers and each other, never the checkpoint reader, the converters or the weight store."""
    graph = import_graph()
    models = set(graph["groupmood.models.catalog"]) - {"groupmood.models.registry"}
    assert "groupmood.models.faceapi" in models and "groupmood.models.global_cnns" in models
    allowed = {"groupmood.models.registry", "groupmood.models.heads", "groupmood.models.layers"} | models
    wrong = {f"{m} -> {t} ({graph[m][t][0]}:{graph[m][t][1]})" for m in models for t in graph[m] if t not in allowed}
    assert not wrong, "model modules import more than the registry, heads and layers:\n" + "\n".join(sorted(wrong))
