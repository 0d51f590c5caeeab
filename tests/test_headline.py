"""One latency number a user can quote: every command that states a schedule's latency
states "expected latency on DEVICE: X ms (±Y, basis)", with the parts only in --json and
--verbose; ``predict --budget`` applies the budget's stored re-anchoring."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from tests.profile_helper import synthetic_table

SPEC = "deit_tiny:dynamicvit@0.7"


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.json"
    synthetic_table().save(path)
    return path


@pytest.fixture
def fitted_table(tmp_path):
    """A table whose end-to-end fit left residuals of +3 % and −4 % on two whole models:
    its measured error is their root mean square, sqrt((0.03² + 0.04²) / 2)."""
    t = synthetic_table()
    fit = [
        {"measured_ms": 10.0, "corrected_ms": 10.3},
        {"measured_ms": 20.0, "corrected_ms": 19.2},
    ]
    t = replace(t, extra={**t.extra, "e2e_fit": fit})
    path = tmp_path / "fitted.json"
    t.save(path)
    return path


def _json(cli, *args):
    code, out, err = cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_predict_says_one_number_and_hides_the_parts(cli, table):
    code, out, err = cli("predict", SPEC, "--table", table)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("expected latency on synthetic: ")
    info = _json(cli, "predict", SPEC, "--table", table)
    e = info["expected"]
    assert e["ms"] == pytest.approx(info["predicted_ms"]) and e["basis"] == "latency table"
    assert f"{e['ms']:.2f} ms" in lines[0]
    # no error recorded in a synthetic table: the line says so instead of "±0.00"
    assert e["plus_minus_ms"] is None and "± unknown" in lines[0]
    code, verbose, _ = cli("predict", SPEC, "--table", table, "--verbose")
    assert "block 11" in verbose and "total" in verbose and lines[0] in verbose


def test_the_plus_minus_is_the_tables_measured_error(cli, fitted_table):
    e = _json(cli, "predict", SPEC, "--table", fitted_table)["expected"]
    rms = math.sqrt((0.03**2 + 0.04**2) / 2)
    assert e["parts"]["error"] == pytest.approx(rms)
    assert e["plus_minus_ms"] == pytest.approx(e["ms"] * rms)


def test_predict_with_a_budget_applies_its_stored_rescale(cli, table, tmp_path):
    budget = tmp_path / "b.json"
    code, _, err = cli("budget", "--table", table, "--target-ms", "8", "-o", budget, "--no-plot")
    assert code == 0, err
    data = json.loads(budget.read_text())
    data["reanchor_scale"] = 1.25  # as if --verify had found this machine 25 % slower
    budget.write_text(json.dumps(data))
    plain = _json(cli, "predict", SPEC, "--table", table)
    info = _json(cli, "predict", "deit_tiny", "--budget", budget, "--table", table)
    e = info["expected"]
    assert e["basis"] == "latency table, rescaled" and e["parts"]["rescale"] == 1.25
    assert e["parts"]["table_ms"] == pytest.approx(info["predicted_ms"])
    assert e["ms"] == pytest.approx(info["predicted_ms"] * 1.25)
    assert info["keep_ratios"] == data["keep_ratios"] != plain["keep_ratios"]


def test_budget_leads_with_the_expected_latency(cli, table, tmp_path):
    out = tmp_path / "b.json"
    code, text, err = cli("budget", "--table", table, "--target-ms", "8", "-o", out, "--no-plot")
    assert code == 0, err
    lines = text.strip().splitlines()
    assert lines[0].startswith("expected latency on synthetic: ")
    assert "the table predicts" not in text
    data = _json(cli, "budget", "--table", table, "--target-ms", "8", "-o", out, "-f", "--no-plot")
    assert data["expected"]["ms"] == pytest.approx(data["predicted_ms"])
    assert data["expected"]["ms"] <= 8.0
    code, verbose, _ = cli(
        "budget", "--table", table, "--target-ms", "8", "-o", out, "-f", "--no-plot", "-v"
    )
    assert "the table predicts" in verbose
