"""Fuzzing the files edgeprune reads: latency tables, budget files, sensitivity files,
device descriptors and resume files (issue #33, item 4).

Each format starts from a valid file made by the code itself (or, for the parts a
measurement would take minutes to make, built by hand as the code writes them) and is
mutated ``fuzz_cases`` times with a fixed seed: random bytes, truncations at random
offsets, byte flips, a wrong type at a random path, a missing key, an extra key, and
NaN / ±inf / 1e400 / -1 / huge integers / strings in numeric fields. Every case must
either load, and then be usable (a prediction is a finite number, a timing is finite),
or raise ``EdgepruneError``: never another exception. Latency tables and budget files
also go through ``edgeprune predict`` for a share of the cases: exit 0 with finite
JSON, or exit 2 with one line, never exit 1.

Each test records ``fuzz_format``, ``fuzz_cases`` and ``fuzz_failures``
(``record_property``) for ``benchmarks/fuzz.py``, which runs every ``test_fuzz_*`` with
thousands of cases.
"""

from __future__ import annotations

import json
import math
import random
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest

from edgeprune.accuracy.sensitivity import ResumeFile as SensitivityResumeFile
from edgeprune.budget.file import budget_dict, load_budget
from edgeprune.budget.search import load_sensitivity, search
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.plan import dense_plan
from edgeprune.latency.model import LatencyModel, expected_from_table, measured_error
from edgeprune.latency.table import Anchor, EndToEnd, load, untrusted_warning
from edgeprune.profiles.devices import _from_toml
from edgeprune.profiling.resume import ResumeFile as SweepResumeFile
from edgeprune.render.tables import table_lines
from edgeprune.runtimes.base import device_options
from edgeprune.runtimes.timing import Timing
from tests.profile_helper import synthetic_table

SEED = 33

# ---- mutations -------------------------------------------------------------------------
# JSON literals json.dumps cannot write: placed as these strings, then substituted
LITERALS = {
    '"__NAN__"': "NaN",
    '"__INF__"': "Infinity",
    '"__-INF__"': "-Infinity",
    '"__1E400__"': "1e400",
    '"__-1E400__"': "-1e400",
}
HOSTILE_NUMBERS = [
    -1, 0, -0.0, 1e-320, 1.5, -1e308, 1e308, 2**63, 10**400, -(10**400), "1", "1.5", "nan",
    "__NAN__", "__INF__", "__-INF__", "__1E400__", "__-1E400__", True, None,
]  # fmt: skip
HOSTILE_VALUES = [
    None, True, False, "", "x", "x" * 5000, [], {}, [1, 2], {"a": 1}, [[[]]], [None],
    *HOSTILE_NUMBERS,
]  # fmt: skip


def _paths(obj, here: tuple = ()) -> Iterator[tuple]:
    """Every path (a tuple of keys / indices) in ``obj``, the root included."""
    yield here
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*here, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*here, i))


def _get(obj, path: tuple):
    for k in path:
        obj = obj[k]
    return obj


def _set(obj, path: tuple, value):
    _get(obj, path[:-1])[path[-1]] = value


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _structural(obj, rng: random.Random) -> tuple[str, object]:
    """A copy of ``obj`` with one structural change, and what it was."""
    obj = json.loads(json.dumps(obj))
    paths = [p for p in _paths(obj) if p]
    kind = rng.choice(["type", "number", "number", "missing", "extra", "list"])
    if kind == "number":
        numeric = [p for p in paths if _is_number(_get(obj, p))]
        if numeric:
            p = rng.choice(numeric)
            v = rng.choice(HOSTILE_NUMBERS)
            _set(obj, p, v)
            return f"number {p}={v!r:.40}", obj
        kind = "type"
    if kind == "missing":
        keyed = [p for p in paths if isinstance(_get(obj, p[:-1]), dict)]
        if keyed:
            p = rng.choice(keyed)
            del _get(obj, p[:-1])[p[-1]]
            return f"missing {p}", obj
        kind = "type"
    if kind == "extra":
        dicts = [p for p in _paths(obj) if isinstance(_get(obj, p), dict)]
        p = rng.choice(dicts)
        _get(obj, p)[rng.choice(["zz", "extra", "tokens", "median_ms", "schema"])] = rng.choice(
            HOSTILE_VALUES
        )
        return f"extra key in {p}", obj
    if kind == "list":
        lists = [p for p in _paths(obj) if isinstance(_get(obj, p), list) and _get(obj, p)]
        if lists:
            p = rng.choice(lists)
            lst = _get(obj, p)
            op = rng.choice(["drop", "dup", "reverse", "hostile"])
            if op == "drop":
                lst.pop(rng.randrange(len(lst)))
            elif op == "dup":
                lst.append(lst[rng.randrange(len(lst))])
            elif op == "reverse":
                lst.reverse()
            else:
                lst[rng.randrange(len(lst))] = rng.choice(HOSTILE_VALUES)
            return f"list {op} {p}", obj
    p = rng.choice(paths)
    v = rng.choice(HOSTILE_VALUES)
    _set(obj, p, v)
    return f"type {p}={v!r:.40}", obj


def _dumps(obj) -> bytes:
    text = json.dumps(obj)
    for k, v in LITERALS.items():
        text = text.replace(k, v)
    return text.encode()


def _byte_level(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["random", "truncate", "truncate", "flip", "flip"])
    if kind == "random":
        return "random bytes", rng.randbytes(rng.randrange(0, 2 * len(raw) + 2))
    if kind == "truncate":
        at = rng.randrange(0, len(raw))
        return f"truncated at {at}", raw[:at]
    b = bytearray(raw)
    n = rng.randint(1, 8)
    for _ in range(n):
        i = rng.randrange(len(b))
        b[i] ^= rng.randint(1, 255)
    return f"{n} byte flips", bytes(b)


def json_cases(obj, n: int, seed: int = SEED) -> Iterator[tuple[str, bytes]]:
    """``n`` hostile variants of the JSON document ``obj``: (what, file bytes)."""
    raw = _dumps(obj)
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        if rng.random() < 0.35:
            what, data = _byte_level(raw, rng)
        else:
            what, changed = _structural(obj, rng)
            data = _dumps(changed)
        yield f"case {i}: {what}", data


class Failures:
    """The cases that ended in something other than a load or an EdgepruneError."""

    def __init__(self, record_property, n: int, fmt: str):
        self.rows: list[str] = []
        self.record, self.n = record_property, n
        record_property("fuzz_format", fmt)

    def check(self, what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except EdgepruneError as e:
            assert "\n" not in e.message, f"{what}: a multi-line error: {e.message!r}"
        except Exception as e:  # noqa: BLE001 - what the fuzzing is looking for
            self.rows.append(f"{what}: {e.__class__.__name__}: {str(e)[:200]}")

    def done(self) -> None:
        self.record("fuzz_cases", self.n)
        self.record("fuzz_failures", len(self.rows))
        assert not self.rows, f"{len(self.rows)} of {self.n} cases failed:\n" + "\n".join(
            self.rows[:10]
        )


def _finite(x, what: str) -> None:
    assert isinstance(x, int | float) and math.isfinite(x), f"{what} is {x!r}"


def _strict_json(text: str):
    def no(name):
        raise AssertionError(f"{name} in the output")

    return json.loads(text, parse_constant=no)


# ---- latency tables --------------------------------------------------------------------
def valid_table() -> dict:
    """A table as the sweep writes it (synthetic numbers), with halves, a selector curve,
    end-to-end anchors and the ``extra`` keys edgeprune reads back."""
    t = synthetic_table(split=True, e2e=(0.1, 1.05))
    t.e2e = EndToEnd(
        (Anchor("deit_tiny:dense", (197,) * 12, (197,) * 12, (), 20.0, 21.0),), 0.1, 1.05
    )
    t.extra = {
        "noise": {"points": 20, "median_spread": 0.02, "p90_spread": 0.05, "shape_tolerance": 0.04},
        "retimed": {"count": 0, "points": [], "still_breaking": []},
        "interp_check": {"table": "block", "max_rel_err": 0.03,
                         "points": [{"tokens": 25, "measured_ms": 0.2, "rel_err": 0.03}]},
        "e2e_fit": [{"label": "deit_tiny:dense", "pieces_ms": 19.0, "measured_ms": 20.0,
                     "corrected_ms": 20.05}],
        "validation": {"median_error": 0.04, "limit": 0.1, "trusted": True, "configs": 3,
                       "date": "2026-01-01T00:00:00+00:00"},
    }  # fmt: skip
    return t.to_dict()


def use_table(path: Path) -> None:
    """Load the table at ``path`` and use it as the commands do."""
    t = load(path)
    model = LatencyModel(t, str(path))
    pred = model.predict(dense_plan(t.arch))
    _finite(pred.total_ms, "the dense prediction")
    exp = expected_from_table(model, pred.total_ms)
    _finite(exp.ms, "the expected latency")
    if exp.plus_minus_ms is not None:
        _finite(exp.plus_minus_ms, "its ±")
    _finite(measured_error(t)[0], "the measured error")
    untrusted_warning(t, path)
    table_lines(path, t)


def _cli_ok(code: int, out: str, err: str, what: str) -> None:
    assert code in (0, 2), f"{what}: exit {code}: {err[-500:]}"
    if code == 2:
        assert err.startswith("error:") and "Traceback" not in err, f"{what}: {err[-300:]}"
    else:
        info = _strict_json(out)
        _finite(info["expected"]["ms"], f"{what}: the expected latency")


def test_fuzz_latency_table_loader(tmp_path, fuzz_cases, record_property):
    f = Failures(record_property, fuzz_cases, "latency table")
    path = tmp_path / "t.json"
    good = valid_table()
    path.write_bytes(_dumps(good))
    use_table(path)  # the valid file is usable
    for what, data in json_cases(good, fuzz_cases):
        path.write_bytes(data)
        f.check(what, lambda: use_table(path))
    f.done()


def test_fuzz_latency_table_cli_predict(cli, tmp_path, fuzz_cases, record_property):
    n = max(30, fuzz_cases // 5)
    f = Failures(record_property, n, "latency table (predict)")
    path = tmp_path / "t.json"
    for what, data in json_cases(valid_table(), n, seed=SEED + 1):
        path.write_bytes(data)

        def run(what=what):
            _cli_ok(*cli("predict", "deit_tiny:dynamicvit@0.7", "--profile", path, "--json"), what)

        f.check(what, run)
    f.done()


# ---- budget files ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def budget_files(tmp_path_factory) -> tuple[Path, dict]:
    """A latency table file and a budget made on it by the budget search."""
    d = tmp_path_factory.mktemp("budget")
    table = d / "t.json"
    table.write_bytes(_dumps(valid_table()))
    model = LatencyModel(load(table), str(table))
    dense = model.predict(dense_plan(model.arch)).total_ms
    result = search(model, 0.8 * dense, "dynamicvit", "geometric")
    return table, budget_dict(result, model, table)


def use_budget(path: Path) -> None:
    b = load_budget(path)
    _finite(b.table_target_ms, "the table's target")
    model = b.latency_model()
    _finite(model.predict(dense_plan(model.arch)).total_ms, "the dense prediction")


def test_fuzz_budget_loader(budget_files, tmp_path, fuzz_cases, record_property):
    _, good = budget_files
    f = Failures(record_property, fuzz_cases, "budget file")
    path = tmp_path / "b.json"
    path.write_bytes(_dumps(good))
    use_budget(path)
    for what, data in json_cases(good, fuzz_cases, seed=SEED + 2):
        path.write_bytes(data)
        f.check(what, lambda: use_budget(path))
    f.done()


def test_fuzz_budget_cli_predict(cli, budget_files, tmp_path, fuzz_cases, record_property):
    table, good = budget_files
    n = max(30, fuzz_cases // 5)
    f = Failures(record_property, n, "budget file (predict --budget)")
    path = tmp_path / "b.json"
    for what, data in json_cases(good, n, seed=SEED + 3):
        path.write_bytes(data)

        def run(what=what):
            args = ("predict", "deit_tiny", "--profile", table, "--budget", path, "--json")
            _cli_ok(*cli(*args), what)

        f.check(what, run)
    f.done()


# ---- sensitivity files -----------------------------------------------------------------
def valid_sensitivity() -> dict:
    """A sensitivity file as ``edgeprune sensitivity`` writes it (the fields budget reads)."""
    grid = [0.3, 0.5, 0.7, 1.0]
    return {
        "schema": "edgeprune.sensitivity",
        "version": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "metric": "top1",
        "dense": 72.2,
        "stages": {
            str(loc): {
                "keep_ratios": grid,
                "accuracy": [72.2 - (1 - r) * k for r in grid],
                "agreement_with_dense": [100 - (1 - r) * k for r in grid],
                "kl_to_dense": [(1 - r) * 0.1 for r in grid],
                "schedules": [[r, r, r] for r in grid],
            }
            for loc, k in ((3, 12.0), (6, 6.0), (9, 2.0))
        },
        "arch": "deit_tiny",
        "method": "dynamicvit",
        "locs": [3, 6, 9],
        "images": {"folder": "imgs", "images": 100, "labelled": True, "classes": 10, "read": 100},
    }


def use_sensitivity(path: Path) -> None:
    s = load_sensitivity(path)
    assert s.indistinct is None or isinstance(s.indistinct, str)
    locs = tuple(sorted(s.stages))
    rng = random.Random(len(locs))
    schedules = [tuple(rng.uniform(0.01, 1.0) for _ in locs) for _ in range(5)]
    for extrapolate in (False, True):
        for acc in s.predict_many(locs, schedules, extrapolate=extrapolate):
            _finite(acc, "a predicted accuracy")
            assert 0 <= acc <= 100, acc


def test_fuzz_sensitivity_loader(tmp_path, fuzz_cases, record_property):
    f = Failures(record_property, fuzz_cases, "sensitivity file")
    path = tmp_path / "s.json"
    good = valid_sensitivity()
    path.write_bytes(_dumps(good))
    use_sensitivity(path)
    for what, data in json_cases(good, fuzz_cases, seed=SEED + 4):
        path.write_bytes(data)
        f.check(what, lambda: use_sensitivity(path))
    f.done()


# ---- device descriptors ----------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        items = (f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None)
        return "{ " + ", ".join(items) + " }"
    raise TypeError(type(v))


def toml_dumps(d: dict) -> str:
    """A flat TOML document of ``d`` (None values left out: TOML has no null)."""
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in d.items() if v is not None)


TOML_NUMBERS = {"__NAN__": math.nan, "__INF__": math.inf, "__-INF__": -math.inf,
                "__1E400__": math.inf, "__-1E400__": -math.inf}  # fmt: skip


def _toml_case(d: dict, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.35:
        what, raw = _byte_level(toml_dumps(d).encode(), rng)
        return what, raw.decode("utf-8", errors="replace")
    what, changed = _structural(d, rng)
    for p in list(_paths(changed)):
        if p and isinstance(v := _get(changed, p), str) and v in TOML_NUMBERS:
            _set(changed, p, TOML_NUMBERS[v])
    return what, toml_dumps(changed)


def use_device(text: str) -> None:
    dev = _from_toml(text, "fuzz.toml")
    threads = dev.resolved_threads()
    assert isinstance(threads, int) and threads >= 1, threads
    dev.to_dict()
    device_options(dev)
    dev.at_host("somewhere").here()


def test_fuzz_device_descriptor(fuzz_cases, record_property):
    folder = resources.files("edgeprune.profiles") / "devices"
    texts = [e.read_text() for e in sorted(folder.iterdir(), key=lambda p: p.name)
             if e.name.endswith(".toml")]  # fmt: skip
    for text in texts:
        use_device(text)
        use_device(toml_dumps(tomllib.loads(text)))  # the writer here writes valid TOML
    f = Failures(record_property, fuzz_cases, "device descriptor")
    for i in range(fuzz_cases):
        rng = random.Random(SEED * 7 + i)
        what, text = _toml_case(tomllib.loads(texts[i % len(texts)]), rng)
        f.check(f"case {i}: {what}", lambda text=text: use_device(text))
    f.done()


# ---- resume files ----------------------------------------------------------------------
SWEEP_KEY = {"device": "cpu", "arch": "deit_tiny", "method": "dynamicvit", "grid": [1, 197]}


def _sweep_resume(path: Path) -> None:
    r = SweepResumeFile(path, SWEEP_KEY)
    for rnd in range(2):
        for table, tokens in (("block", 1), ("block", 197), ("embed", None), ("head", None)):
            samples = [0.1 * (rnd + 1) * (1 + i / 10) * (tokens or 50) for i in range(6)]
            r.put(table, tokens, rnd, Timing.from_samples(samples, runtime="onnxruntime"))


def use_sweep_resume(path: Path) -> None:
    r = SweepResumeFile(path, SWEEP_KEY)
    for key in list(r.timings):
        t = r.get(*key)
        for v in (t.median_ms, t.p90_ms, t.min_ms, t.max_ms):
            _finite(v, f"a resumed time of {key}")
            assert v >= 0, v


def test_fuzz_resume_sweep(tmp_path, fuzz_cases, record_property):
    path = tmp_path / "t.json.partial.json"
    _sweep_resume(path)
    good = json.loads(path.read_text())
    use_sweep_resume(path)
    assert len(SweepResumeFile(path, SWEEP_KEY).timings) == 8
    f = Failures(record_property, fuzz_cases, "resume file (profile)")
    for what, data in json_cases(good, fuzz_cases, seed=SEED + 5):
        path.write_bytes(data)
        f.check(what, lambda: use_sweep_resume(path))
    f.done()


SENS_KEY = {"source": "deit_tiny:dynamicvit", "grid": [0.5, 1.0], "files_sha256": "ab" * 32}


def use_sensitivity_resume(path: Path) -> None:
    r = SensitivityResumeFile(path, SENS_KEY)
    for p in r.points.values():
        for k in ("accuracy", "agreement_with_dense", "kl_to_dense", "keep_ratio"):
            _finite(p[k], k)
        assert 0 <= p["accuracy"] <= 100 and 0 < p["keep_ratio"] <= 1


def test_fuzz_resume_sensitivity(tmp_path, fuzz_cases, record_property):
    path = tmp_path / "s.json.partial.json"
    r = SensitivityResumeFile(path, SENS_KEY)
    for loc in (3, 6, 9):
        for ratio in (0.5, 1.0):
            r.put({"stage": loc, "keep_ratio": ratio, "keep_ratios": [ratio, ratio, ratio],
                   "accuracy": 70.0 * ratio, "agreement_with_dense": 100.0 * ratio,
                   "kl_to_dense": 0.1 * (1 - ratio)})  # fmt: skip
    good = json.loads(path.read_text())
    use_sensitivity_resume(path)
    assert len(SensitivityResumeFile(path, SENS_KEY).points) == 6
    f = Failures(record_property, fuzz_cases, "resume file (sensitivity)")
    for what, data in json_cases(good, fuzz_cases, seed=SEED + 6):
        path.write_bytes(data)
        f.check(what, lambda: use_sensitivity_resume(path))
    f.done()
