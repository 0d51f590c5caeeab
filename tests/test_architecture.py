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


def imports_of(path: Path, name: str, mods: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere (inside functions and under
    ``if TYPE_CHECKING`` too); ``from pkg import sub`` counts ``pkg.sub``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
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


def test_export_and_runtimes_import_only_the_core():
    """Issue #30, as pyproject's import-linter contracts say it: the core imports nothing
    else of edgeprune; export/ and runtimes/ import only themselves and the core (what
    they share is in core/backends/). Imports inside functions and under TYPE_CHECKING
    count."""
    allowed = {
        "edgeprune.core": ("edgeprune.core",),
        "edgeprune.export": ("edgeprune.export", "edgeprune.core"),
        "edgeprune.runtimes": ("edgeprune.runtimes", "edgeprune.core"),
    }
    wrong = []
    for name, deps in import_graph().items():
        for top, ok in allowed.items():
            if name == top or name.startswith(top + "."):
                wrong += [
                    f"{name} -> {d}"
                    for d in sorted(deps)
                    if d != "edgeprune" and not any(d == o or d.startswith(o + ".") for o in ok)
                ]
    assert not wrong, wrong


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_runtime_and_transport_is_registered_where_defined():
    from edgeprune.core.backends.runner import RUNTIMES, runtime
    from edgeprune.profiles.devices import all_devices
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
    from edgeprune.core.backends.runner import get_runner
    from edgeprune.core.errors import EdgepruneError

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


# ---- the house rules of the layout (issue: one house a newcomer can read) ---------------
LIBRARY = [ROOT / "edgeprune", ROOT / "export", ROOT / "runtimes", ROOT / "profiles"]
# optional heavy dependencies: imported where used (one helper, or a module the registry
# loads), never at the top of a module everything imports
OPTIONAL = {"tensorrt", "coremltools", "executorch", "matplotlib", "torchao"}


def _library_functions():
    for folder in LIBRARY:
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield path.relative_to(ROOT), node


def test_no_function_over_60_lines():
    long = [
        f"{p}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for p, n in _library_functions()
        if n.end_lineno - n.lineno + 1 > 60
    ]
    assert not long, long


def test_no_function_takes_more_than_6_positional_parameters():
    many = []
    for p, n in _library_functions():
        pos = [a.arg for a in n.args.posonlyargs + n.args.args if a.arg not in ("self", "cls")]
        if len(pos) > 6:
            many.append(f"{p}:{n.lineno} {n.name} ({len(pos)})")
    assert not many, many


def test_no_request_built_from_locals():
    hits = [
        str(p.relative_to(ROOT))
        for folder in LIBRARY
        for p in folder.rglob("*.py")
        if "locals()" in p.read_text()
    ]
    assert not hits, hits


def test_imports_at_the_top_but_optional_heavy_ones_and_the_cli():
    """In a function: only an optional heavy dependency, or a command's library in the CLI
    (so that ``--help`` loads nothing heavy)."""
    inside = []
    for p, fn in _library_functions():
        if p.parts[:2] == ("edgeprune", "cli"):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if (mod or "").split(".")[0] not in OPTIONAL:
                    inside.append(f"{p}:{node.lineno} {fn.name}: {mod}")
    assert not inside, inside


def test_requests_and_results_are_keyword_only_dataclasses():
    """A dataclass named ...Request, ...Job or ...Result is built with keywords only."""
    loose = []
    for folder in LIBRARY:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ClassDef):
                    continue
                if not node.name.endswith(("Request", "Job", "Result")):
                    continue
                for d in node.decorator_list:
                    text = ast.unparse(d)
                    if text.startswith("dataclass") and "kw_only=True" not in text:
                        loose.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not loose, loose


def test_every_job_package_says_what_it_owns():
    jobs = ("latency", "profiling", "budget", "accuracy", "training", "render", "cli")
    for pkg in ("core", "core/backends", *jobs):
        init = ROOT / "edgeprune" / pkg / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and 1 <= len(doc.splitlines()) <= 2, pkg


def test_package_data_lists_only_files_that_exist():
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {k: ROOT / v for k, v in cfg["package-dir"].items()}
    for pkg, patterns in cfg["package-data"].items():
        top = max((k for k in dirs if pkg == k or pkg.startswith(k + ".")), key=len)
        folder = dirs[top].joinpath(*pkg[len(top) :].strip(".").split(".") if pkg != top else [])
        for pattern in patterns:
            assert list(folder.glob(pattern)), (pkg, pattern)
