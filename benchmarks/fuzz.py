"""The fuzz tests with thousands of cases: how many hostile files of each format were
tried, and how many ended in something other than a load or one clear error.

    python benchmarks/fuzz.py [--cases 5000] [--tests tests] [--outdir benchmarks/results]
        [--name fuzz]

Runs every test named ``test_fuzz_*`` under ``--tests`` (pytest, in this process) with
``EDGEPRUNE_FUZZ_CASES=<cases>``; the CI run of the same tests uses 200. A test says
what it covered with ``record_property``: ``fuzz_format`` (the file format), ``fuzz_cases``
(cases run) and ``fuzz_failures`` (cases that failed); for a test that records none the
script counts ``--cases`` cases, and a failure as at least one failed case
(``failures_exact: false``). Writes ``<outdir>/<name>.json`` and ``.md``: per test file,
per format and per test the cases, failures, outcome and seconds, with the machine and
the versions. Exit status 1 when any case failed. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from timing import host_meta, write_results  # noqa: E402

PREFIX = "test_fuzz_"
PACKAGES = ("edgeprune", "torch", "numpy", "pydantic", "hypothesis", "onnxruntime", "pytest")


class Collector:
    """A pytest plugin: keeps the ``test_fuzz_*`` tests only, and records each one's
    outcome, duration, properties and (on failure) the first line of its report."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def pytest_collection_modifyitems(self, config, items):
        keep = [i for i in items if getattr(i, "originalname", i.name).startswith(PREFIX)]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep

    def pytest_runtest_logreport(self, report):
        row = self.rows.setdefault(
            report.nodeid,
            {"test": report.nodeid, "outcome": "passed", "seconds": 0.0, "properties": {}},
        )
        row["seconds"] += report.duration
        row["properties"].update(dict(report.user_properties))
        if report.failed or (report.skipped and row["outcome"] == "passed"):
            row["outcome"] = "failed" if report.failed else "skipped"
            if report.failed and "error" not in row:
                row["error"] = _first_line(report)


def _first_line(report) -> str:
    """The first ``E`` line of a failure that says something (hypothesis draws boxes)."""
    text = str(report.longrepr or "")
    said = [ln[1:].strip(" |+-") for ln in text.splitlines() if ln.startswith("E ")]
    said = [ln for ln in said if any(c.isalnum() for c in ln)] or text.strip().splitlines()[-1:]
    return (said or [""])[0][:300]


def summarise(rows: list[dict], cases: int) -> list[dict]:
    """Per test: its file, format, cases and failures (recorded, else estimated)."""
    out = []
    for r in rows:
        props = r["properties"]
        path, _, name = r["test"].partition("::")
        recorded = "fuzz_failures" in props
        failures = props.get("fuzz_failures")
        if not recorded:
            failures = 0 if r["outcome"] != "failed" else 1
        out.append(
            {
                "test": name,
                "file": path,
                "format": props.get("fuzz_format") or name.split("[")[0][len(PREFIX) :],
                "cases": int(props.get("fuzz_cases", cases)) if r["outcome"] != "skipped" else 0,
                "failures": int(failures),
                "failures_exact": recorded or r["outcome"] != "failed",
                "outcome": r["outcome"],
                "seconds": round(r["seconds"], 3),
                **({"error": r["error"]} if "error" in r else {}),
            }
        )
    return out


def group(tests: list[dict], key: str) -> dict[str, dict]:
    """Cases, failures, tests and seconds added up per ``key`` (``file`` or ``format``)."""
    out: dict[str, dict] = {}
    for t in tests:
        g = out.setdefault(t[key], {"tests": 0, "cases": 0, "failures": 0, "seconds": 0.0})
        g["tests"] += 1
        g["cases"] += t["cases"]
        g["failures"] += t["failures"]
        g["seconds"] = round(g["seconds"] + t["seconds"], 3)
        if key == "format":
            g.setdefault("files", [])
            if t["file"] not in g["files"]:
                g["files"].append(t["file"])
    return out


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def markdown(data: dict) -> list[str]:
    m = data["meta"]
    lines = [
        f"# Fuzzing the input files: {m['cases_per_test']} cases per test",
        "",
        f"{data['total']['cases']} cases in {data['total']['tests']} tests, "
        f"{data['total']['failures']} failed ({m['date']}, {m['machine']}, "
        f"{m.get('cores')} cores; {m['seconds']:.0f} s).",
        "",
        "| format | test files | tests | cases | failures | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for fmt, g in sorted(data["formats"].items()):
        files = ", ".join(f"`{f}`" for f in g["files"])
        lines.append(
            f"| {fmt} | {files} | {g['tests']} | {g['cases']} | {g['failures']} | "
            f"{g['seconds']:.1f} |"
        )
    failed = [t for t in data["tests"] if t["outcome"] == "failed"]
    if failed:
        lines += ["", "Failed:", ""]
        lines += [f"- `{t['file']}::{t['test']}`: {t.get('error', '')}" for t in failed]
    return lines


def run(cases: int, tests: Path, extra: list[str]) -> tuple[list[dict], float, int]:
    """Run the fuzz tests in this process with ``cases`` cases each."""
    import pytest

    os.environ["EDGEPRUNE_FUZZ_CASES"] = str(cases)  # read when tests/conftest.py loads
    collector = Collector()
    t0 = time.perf_counter()
    code = pytest.main(
        [str(tests), "-q", "-p", "no:cacheprovider", "-k", "fuzz", *extra], plugins=[collector]
    )
    return list(collector.rows.values()), time.perf_counter() - t0, int(code)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", type=int, default=5000, help="cases per fuzz test (default 5000)")
    ap.add_argument("--tests", default=str(ROOT / "tests"), help="the folder of tests")
    ap.add_argument("--outdir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="fuzz", help="results file stem (default fuzz)")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args()
    if args.cases < 1:
        ap.error("--cases must be at least 1")
    os.chdir(ROOT)  # tests import as the package ``tests``
    rows, seconds, code = run(args.cases, Path(args.tests), args.pytest_args)
    if not rows:
        print(f"no {PREFIX}* test ran (pytest exit {code})", file=sys.stderr)
        return 2
    tests = summarise(rows, args.cases)
    total = group(tests, "outcome")
    data = {
        "meta": {
            **host_meta(),
            **versions(),
            "commit": commit(),
            "cases_per_test": args.cases,
            "seconds": round(seconds, 1),
            "pytest_exit": code,
        },
        "total": {
            "tests": len(tests),
            "cases": sum(t["cases"] for t in tests),
            "failures": sum(t["failures"] for t in tests),
            "by_outcome": {k: v["tests"] for k, v in total.items()},
        },
        "files": group(tests, "file"),
        "formats": group(tests, "format"),
        "tests": tests,
    }
    write_results(args.outdir, args.name, data, markdown(data))
    return 1 if data["total"]["failures"] or code not in (0, 5) else 0


if __name__ == "__main__":
    sys.exit(main())
