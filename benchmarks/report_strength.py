"""REPORT.md's section on how strong the tests are: mutation.py's scores and fuzz.py's
cases per file format (report.py)."""

from __future__ import annotations

from report_data import Run, Section, table


def strength(runs: dict[str, list[Run]]) -> Section:
    sec = Section("8. How strong the tests are")
    _fuzz(sec, runs)
    if not runs["mutation"]:
        sec.add("No result file covers the tests' strength (mutation.py) yet.")
        return sec
    run = max(runs["mutation"], key=lambda r: (r.date, r.name))
    m = run.meta
    sec.add(
        f"mutation.py: {m.get('tool')} {m.get('tool_version')} makes small wrong versions of "
        "the numeric core (an operator, a constant, a comparison, an argument changed) and runs "
        "each module's pure-python tests on every one; a version the tests fail on is killed. "
        "*Score*: killed (runs past the time limit included, counted apart) over all versions "
        "(those no test reached or that were not run count against it), "
        f"the goal at least {m.get('threshold', 0.85):.0%} per module. *Before*: the suite "
        "without the tests written to kill what survived; *after*: with them. The versions "
        "still alive after are listed with their diff in the file, each explained (an "
        "equivalent change) or marked unexplained.",
        "",
        *table(
            [
                "module",
                "phase",
                "mutants",
                "killed",
                "timeout",
                "survived",
                "no test",
                "not run",
                "score",
                "explained",
                "run",
            ],  # fmt: skip
            (
                [
                    mod,
                    phase,
                    str(r["total"]),
                    str(r["killed"]),
                    str(r["timeout"]),
                    str(r["survived"]),
                    str(r["no_tests"]),
                    str(r.get("not_run", 0)),
                    f"{r['score']:.1%}" + ("" if r["meets_threshold"] else " ✗"),
                    str(r["explained"]),
                    sec.cite(run),
                ]
                for mod, phases in run.data.get("modules", {}).items()
                for phase in ("before", "after")
                if (r := phases.get(phase))
            ),
        ),
    )
    return sec


def _fuzz(sec: Section, runs: dict[str, list[Run]]) -> None:
    """fuzz.py's newest run: per file format, the hostile cases tried and how many ended
    in anything but a load or one clear error."""
    if not runs["fuzz"]:
        sec.add("No result file covers the fuzz tests at scale (fuzz.py) yet.", "")
        return
    run = max(runs["fuzz"], key=lambda r: (r.date, r.name))
    m, total = run.meta, run.data["total"]
    sec.add(
        f"fuzz.py: every `test_fuzz_*` test (and the property tests that take their case "
        f"count from it) at {m['cases_per_test']} cases per test, where CI runs 200; the "
        "slowest kinds (a checkpoint through the CLI, a `.pte` loaded by the runner, "
        "`predict` on a file) scale theirs down, as the tests say. A *failure* is a case "
        "that ended in anything but a load or one clear error (an internal error, a "
        f"traceback, a half-written file). {total['cases']} cases, {total['failures']} "
        f"failed, {m['seconds']:.0f} s, torch {m.get('torch')}, onnxruntime "
        f"{m.get('onnxruntime')}:",
        "",
        *table(
            ["file format", "cases", "failures", "seconds", "run"],
            (
                [fmt, str(r["cases"]), str(r["failures"]), f"{r['seconds']:.1f}", sec.cite(run)]
                for fmt, r in sorted(run.data["formats"].items())
            ),
        ),
        "",
    )
