"""The benchmarks' own writers: timing.write_results, and report.py's rewrite of REPORT.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from timing import write_results  # noqa: E402


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


def test_report_rewrite_keeps_the_sections_it_does_not_measure(tmp_path):
    from report import kept_sections

    path = tmp_path / "REPORT.md"
    assert kept_sections(path) == ""  # no report yet
    path.write_text("# Report\n\n## 1. GFLOPs\n\nold\n\n## 8. ExecuTorch\n\nkept\n\n## 18. last\n")
    assert kept_sections(path) == "\n## 8. ExecuTorch\n\nkept\n\n## 18. last\n"
    path.write_text("# Report\n\n## 1. GFLOPs\n")
    assert kept_sections(path) == ""
