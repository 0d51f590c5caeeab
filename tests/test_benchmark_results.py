"""The benchmarks' results: timing.write_results writes them, and REPORT.md is exactly what
``python benchmarks/report.py`` generates from them, every link of it pointing to a file.
Fast: nothing is measured."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import build, uncited  # noqa: E402
from timing import write_results  # noqa: E402

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_writes_json_and_markdown_and_prints(tmp_path, capsys):
    out = tmp_path / "results"  # made when missing
    write_results(out, "run", {"meta": {"threads": 1}, "rows": [1, 2]}, ["# t", "", "| a |"])
    assert json.loads((out / "run.json").read_text()) == {"meta": {"threads": 1}, "rows": [1, 2]}
    assert (out / "run.md").read_text() == "# t\n\n| a |\n"
    assert capsys.readouterr().out == "# t\n\n| a |\n"
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "run.md"]  # no temp left


def test_nothing_half_written_when_data_is_not_json(tmp_path):
    (tmp_path / "run.json").write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        write_results(tmp_path, "run", {"bad": object()}, ["x"])
    assert json.loads((tmp_path / "run.json").read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_report_is_what_the_command_generates_from_the_files(tmp_path):
    out = tmp_path / "REPORT.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert (RESULTS / "REPORT.md").read_text() == out.read_text(), (
        "REPORT.md is stale: run `python benchmarks/report.py`"
    )


def test_every_link_of_the_report_points_to_an_existing_file():
    links = LINK.findall((RESULTS / "REPORT.md").read_text())
    assert len(links) > 50
    missing = [t for t in links if not (RESULTS / t).is_file()]
    assert missing == []


def test_every_result_file_is_cited_by_the_report():
    assert uncited() == [], "results no section cites: remove them (`report.py --uncited`)"


def test_report_has_one_section_per_question_and_no_session_narrative():
    text = (RESULTS / "REPORT.md").read_text()
    heads = re.findall(r"^## (\d)\. ", text, flags=re.M)
    assert heads == ["1", "2", "3", "4", "5", "6", "7", "8", "9"]
    prose = LINK.sub("]", text)  # link targets are file names, not text
    assert not re.search(r"session|issue|#\d", prose, flags=re.I)


def _xnnpack_run(results: Path, name: str, date: str, speedup: float, **meta) -> None:
    row = {
        "spec": "deit_tiny:spvit",
        "threads": 1,
        "batch": 1,
        "gflops_ratio": 2.0,
        "dense_ms": {"median": 10.0},
        "pruned_ms": {"median": 10.0 / speedup},
        "speedup": {"median": speedup},
        "segments": {"pruned": 4},
        "outside": {"topk": 3},
    }
    data = {"meta": {"date": date, "burst": 1, **meta}, "rows": [row]}
    (results / f"{name}.json").write_text(json.dumps(data))
    (results / f"{name}.md").write_text("# t\n")


def test_newest_run_per_configuration_is_taken_never_an_average(tmp_path):
    _xnnpack_run(tmp_path, "xnnpack_old", "2026-01-01T00:00:00+00:00", 1.5, machine="x86_64")
    _xnnpack_run(
        tmp_path,
        "xnnpack_new",
        "2026-02-01T00:00:00+00:00",
        1.9,
        machine="x86_64",
        cpu="Some CPU",
        cores=2,
        python="3.11.7",
    )
    text = build(tmp_path)
    row = next(ln for ln in text.splitlines() if ln.startswith("| deit_tiny:spvit | 1 | 1 | 1 |"))
    assert "| 1.900× | 2.000× | 95.0% |" in row  # the newer run's 1.9, not 1.7
    assert row.endswith("[xnnpack 2026-02-01 00:00:00](xnnpack_new.json) |")
    assert "xnnpack_old.json" not in text
    assert uncited(tmp_path) == ["xnnpack_old.json", "xnnpack_old.md"]
    runs = next(ln for ln in text.splitlines() if ln.startswith("| xnnpack 2026-02-01"))
    assert "| x86_64, Some CPU, 2 cores |" in runs and runs.endswith("| 1 |  |")


def test_a_run_that_did_not_record_its_machine_says_so(tmp_path):
    _xnnpack_run(tmp_path, "xnnpack", "2026-01-01T00:00:00+00:00", 1.5)
    runs = next(ln for ln in build(tmp_path).splitlines() if ln.startswith("| xnnpack 2026"))
    assert "| not recorded |" in runs  # no machine
    assert runs.endswith("| cpu, cores, python |")
    assert "No result file covers accuracy" in build(tmp_path)
