"""The package's shape: no import cycles (module-level or inside functions), every
registry entry resolves, and the thin CLI stays thin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# import name prefix -> folder (pyproject's package-dir)
FOLDERS = {
    "edgeprune.export": ROOT / "export",
    "edgeprune.runtimes": ROOT / "runtimes",
    "edgeprune.profiles": ROOT / "profiles",
    "edgeprune": ROOT / "edgeprune",
}


def package_modules() -> dict[str, Path]:
    mods = {}
    for prefix, folder in FOLDERS.items():
        for f in folder.rglob("*.py"):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            mods.setdefault(name, f)
    return mods


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, name: str, mods: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere (also inside functions), but not
    under ``if TYPE_CHECKING``; ``from pkg import sub`` counts ``pkg.sub``."""
    tree = ast.parse(path.read_text())
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def import_graph() -> dict[str, set[str]]:
    mods = package_modules()
    graph = {n: imports_of(p, n, mods) for n, p in mods.items()}
    # importing a submodule runs its package's __init__ first: not an edge back to it
    return {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30 and "edgeprune.cli.app" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_runtime_and_transport_is_registered_where_defined():
    from edgeprune.profiles.devices import all_devices
    from edgeprune.runtimes.base import RUNTIMES, runtime
    from edgeprune.runtimes.transports import TRANSPORTS, transport_class

    for name in RUNTIMES:
        rt = runtime(name)
        assert rt.name == name and callable(rt.make) and callable(rt.available)
        ok, why = rt.available()
        assert isinstance(ok, bool) and why
    for name in TRANSPORTS:
        cls = transport_class(name)
        assert cls.name == name
        for attr in ("run", "put", "get", "tempdir", "which", "check", "reachable"):
            assert callable(getattr(cls, attr)), (name, attr)
        assert callable(cls.from_device) and callable(cls.check_device)
    for dev in all_devices().values():
        assert dev.runtime in RUNTIMES and dev.transport in TRANSPORTS


def test_runtime_refuses_a_transport_it_cannot_use():
    from edgeprune.core.errors import EdgepruneError
    from edgeprune.runtimes.base import get_runner

    class Far:
        name = "ssh"

    with pytest.raises(EdgepruneError, match="cannot go through transport ssh"):
        get_runner("coreml", threads=1, transport=Far())


def test_cli_is_thin():
    """Each CLI module parses, calls one library function and renders: under 450 lines,
    no function (decorators and signature included) over 50 lines."""
    paths = sorted((ROOT / "edgeprune" / "cli").glob("*.py"))
    assert len(paths) >= 4
    for path in paths:
        text = path.read_text()
        assert len(text.splitlines()) < 450, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                assert node.end_lineno - first + 1 <= 50, (path.name, node.name)
