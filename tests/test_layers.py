"""The package's layers: imports point down only, and no module imports itself in a circle.

Every import counts, including those under ``TYPE_CHECKING`` and those inside
functions: a cycle hidden by a late import is still a cycle to a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "actors"

# Lower numbers are lower layers. A module may import its own layer's modules
# (without a cycle) and any lower layer, never a higher one; layers of the same
# rank do not import each other.
LAYERS: dict[str, int] = {
    "actors._errors": 0,
    "actors._model": 1,
    "actors._runtime": 2,
    "actors._codec": 2,
    "actors._core": 3,
    "actors._journal": 4,
    "actors._cluster": 4,
    "actors._metrics_http": 4,
    "actors._bus_requests": 4,
    "actors._async_holds": 4,
    "actors._async_offloop": 4,
    "actors._bus_start": 5,
    "actors._bus_close": 5,
    "actors._bus": 6,
    "actors._async_stream": 7,
    "actors._async": 8,
    "actors": 9,
    "actors.__main__": 11,
    "actors.otel": 10,
    "actors.cli": 10,
    "actors.demo": 10,
}
GENERATED = "actors._codec._pb"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> str:
    best = ""
    for name in LAYERS:
        if (module == name or module.startswith(name + ".")) and len(name) > len(best):
            best = name
    assert best, f"{module} belongs to no layer; add it to LAYERS"
    return best


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "actors")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "actors":
                continue
            found.add(target)
            # ``from actors._x import y`` may name a submodule ``y``.
            found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(p): p
        for p in PACKAGE.rglob("*.py")
        if not _module_name(p).startswith(GENERATED)
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in _imports(path, name) if t in modules and t != name}
        graph[name] = targets
    return graph


GRAPH = _graph()


def test_every_module_belongs_to_a_layer() -> None:
    for module in GRAPH:
        _layer_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    own = _layer_of(module)
    bad = []
    for target in GRAPH[module]:
        theirs = _layer_of(target)
        if theirs == own or target == "actors":
            if target == "actors" and LAYERS[own] <= LAYERS["actors"]:
                bad.append(target)
            continue
        if LAYERS[theirs] >= LAYERS[own]:
            bad.append(target)
    assert not bad, f"{module} imports from its own rank or above: {sorted(bad)}"


def test_no_import_cycles() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_too_long() -> None:
    long = {
        m: n
        for m, p in ((_module_name(p), p) for p in PACKAGE.rglob("*.py"))
        if not m.startswith(GENERATED) and (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"modules over 600 lines: {long}"
