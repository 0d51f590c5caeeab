"""benchmarks/timing.write_results: the one writer every benchmark script ends with."""

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
