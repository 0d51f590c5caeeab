"""The hostile files issue #33 names for latency tables, budget and sensitivity files,
device descriptors and resume files, one test each: every one ended in an internal
error (exit 1) or was silently used; now each is refused with one line (exit 2 at the
command line), and nothing it would have made is written."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeprune.accuracy.sensitivity import ResumeFile as SensitivityResumeFile
from edgeprune.budget.file import budget_dict, load_budget
from edgeprune.budget.search import Sensitivity, load_sensitivity, search
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.plan import dense_plan
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import from_dict, load, record_validation
from edgeprune.profiles.devices import _from_toml
from edgeprune.profiling.resume import ResumeFile as SweepResumeFile
from tests.profile_helper import synthetic_table

PREDICT = ("predict", "deit_tiny:dynamicvit@0.7", "--json", "--profile")


def table() -> dict:
    return synthetic_table().to_dict()


def _refused(fn, *needles: str) -> EdgepruneError:
    """``fn()`` raises an EdgepruneError whose one line holds every needle."""
    with pytest.raises(EdgepruneError) as e:
        fn()
    line = e.value.one_line()
    assert all(n in line for n in needles), line
    return e.value


def _one_line_exit_2(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


# ---- latency tables --------------------------------------------------------------------
def _write_table(tmp_path, d: dict | str, name: str = "t.json"):
    p = tmp_path / name
    p.write_text(d if isinstance(d, str) else json.dumps(d))
    return p


def test_a_token_count_of_1e400_is_refused(cli, tmp_path):
    text = json.dumps(table()).replace('"tokens": [1, 50,', '"tokens": [1e400, 50,', 1)
    assert "1e400" in text
    code, _, err = cli(*PREDICT, _write_table(tmp_path, text))
    _one_line_exit_2(code, err, "not a valid latency table", "tables.block.tokens[0]")


def test_a_huge_integer_token_count_is_refused(cli, tmp_path):
    d = table()
    d["tables"]["block"]["tokens"][-1] = 10**400
    code, _, err = cli(*PREDICT, _write_table(tmp_path, d))
    _one_line_exit_2(code, err, "tables.block.tokens[4]")


@pytest.mark.parametrize("value", [[1, 2], "dynamicvit", 3])
def test_selectors_of_the_wrong_type_are_refused(cli, tmp_path, value):
    d = table()
    d["tables"]["selectors"] = value
    code, _, err = cli(*PREDICT, _write_table(tmp_path, d))
    _one_line_exit_2(code, err, "tables.selectors")


@pytest.mark.parametrize("value", ["validated", [1], 7])
def test_extra_of_the_wrong_type_is_refused(cli, tmp_path, value):
    d = table()
    d["extra"] = value
    code, _, err = cli(*PREDICT, _write_table(tmp_path, d))
    _one_line_exit_2(code, err, "extra")


@pytest.mark.parametrize("value", ["high", "0.02"])
def test_a_string_noise_is_refused(cli, tmp_path, value):
    d = table()
    d["extra"] = {"noise": {"median_spread": value}}
    code, _, err = cli(*PREDICT, _write_table(tmp_path, d))
    _one_line_exit_2(code, err, "extra.noise.median_spread")


@pytest.mark.parametrize("value", ["4", "many", 2.5, -1])
def test_a_string_or_bad_thread_count_is_refused(tmp_path, value):
    d = table()
    d["device"]["threads"] = value
    _refused(lambda: from_dict(d, "t.json"), "device.threads")


def test_a_string_validation_limit_is_refused(cli, tmp_path):
    d = table()
    d["extra"] = {"validation": {"median_error": 0.5, "limit": "10%", "trusted": False}}
    code, _, err = cli(*PREDICT, _write_table(tmp_path, d))
    _one_line_exit_2(code, err, "extra.validation.limit")


def test_a_nan_literal_in_a_table_is_refused(cli, tmp_path):
    text = json.dumps(table()).replace('"p90_ms": 0.33', '"p90_ms": NaN', 1)
    assert "NaN" in text
    code, _, err = cli(*PREDICT, _write_table(tmp_path, text))
    _one_line_exit_2(code, err, "not a valid latency table")


def test_latencies_that_overflow_the_sum_are_refused(cli, tmp_path):
    d = table()
    d["tables"]["block"]["median_ms"] = [1e308] * 5
    d["tables"]["block"]["p90_ms"] = [1e308] * 5
    code, _, err = cli(*PREDICT, _write_table(tmp_path, d))
    _one_line_exit_2(code, err, "tables.block.median_ms[0]")


def test_validate_does_not_write_its_verdict_into_a_broken_table(tmp_path):
    d = table()
    d["tables"]["selectors"] = [1]
    p = _write_table(tmp_path, d)
    before = p.read_bytes()
    _refused(lambda: record_validation(p, {"median_error": 0.01}), "tables.selectors")
    assert p.read_bytes() == before


# ---- budget files ----------------------------------------------------------------------
@pytest.fixture
def budget(tmp_path) -> dict:
    p = _write_table(tmp_path, table())
    model = LatencyModel(load(p), str(p))
    dense = model.predict(dense_plan(model.arch)).total_ms
    return budget_dict(search(model, 0.8 * dense, "dynamicvit"), model, p)


@pytest.mark.parametrize(
    "field,value",
    [("locs", "369"), ("target_ms", "10"), ("reanchor_scale", "2")],
)
def test_a_budget_field_of_the_wrong_type_is_refused(cli, tmp_path, budget, field, value):
    """A string of digits was read as locations (3, 6, 9), a string as a number."""
    b = tmp_path / "b.json"
    b.write_text(json.dumps({**budget, field: value}))
    code, _, err = cli("inspect", "deit_tiny", "--budget", b)
    _one_line_exit_2(code, err, f"budget file {b} is not valid: {field}")


def test_a_budget_with_an_infinite_target_is_refused(tmp_path, budget):
    b = tmp_path / "b.json"
    text = json.dumps(budget)
    b.write_text(text.replace(f'"target_ms": {budget["target_ms"]}', '"target_ms": 1e400'))
    assert "1e400" in b.read_text()
    _refused(lambda: load_budget(b), "target_ms")


# ---- sensitivity files -----------------------------------------------------------------
def sensitivity(acc: list[float], dense: float = 72.0) -> dict:
    grid = [0.3, 0.5, 0.7, 1.0]
    return {
        "schema": "edgeprune.sensitivity",
        "version": 1,
        "metric": "top1",
        "dense": dense,
        "stages": {str(loc): {"keep_ratios": grid, "accuracy": acc} for loc in (3, 6, 9)},
    }


def test_accuracies_of_1e308_are_refused_and_no_budget_is_written(cli, tmp_path):
    """±1e308 accuracies made a NaN predicted accuracy, written into the budget."""
    p = _write_table(tmp_path, table())
    s = tmp_path / "s.json"
    s.write_text(json.dumps(sensitivity([-1e308, 1e308, -1e308, 72.0])))
    out = tmp_path / "b.json"
    code, _, err = cli("budget", "--profile", p, "--target-ms", "20", "--sensitivity", s,
                       "--out", out, "--no-plot")  # fmt: skip
    _one_line_exit_2(code, err, f"sensitivity file {s} is not valid", "accuracy[0]")
    assert not out.exists()


@pytest.mark.parametrize(
    "acc,dense", [([50, 60, 70, 101], 72.0), ([50, 60, 70, 72], -3.0), ([50, 60, 70, 72], 1e9)]
)
def test_accuracies_outside_0_to_100_percent_are_refused(tmp_path, acc, dense):
    s = tmp_path / "s.json"
    s.write_text(json.dumps(sensitivity(acc, dense)))
    _refused(lambda: load_sensitivity(s), "is not valid", "0 to 100")


def test_a_fraction_scale_sensitivity_file_still_loads(tmp_path):
    s = tmp_path / "s.json"
    s.write_text(json.dumps(sensitivity([0.5, 0.6, 0.7, 0.72], 0.72)))
    assert load_sensitivity(s).predict((3, 6, 9), (1.0, 1.0, 1.0)) == pytest.approx(0.72)


def test_negative_image_count_is_refused_not_a_math_error(tmp_path):
    """The chance level's band took the square root of a negative image count."""
    d = sensitivity([10.0, 10.0, 10.0, 10.0], 10.0)
    d["stages"]["3"]["accuracy"] = [9.0, 10.0, 10.0, 10.0]
    d["images"] = {"classes": 10, "read": -5}
    s = tmp_path / "s.json"
    s.write_text(json.dumps(d))
    _refused(lambda: load_sensitivity(s), "images.read")


def test_a_non_finite_predicted_accuracy_is_refused_not_returned():
    s = Sensitivity(72.0, {3: ((0.5, 1.0), (math.inf, -math.inf))})
    _refused(lambda: s.predict((3,), (0.7,)), "non-finite accuracy")


def test_a_budget_with_a_nan_is_never_written(tmp_path):
    p = _write_table(tmp_path, table())
    model = LatencyModel(load(p), str(p))
    result = search(model, 100.0, "dynamicvit")
    result.chosen.accuracy = math.nan
    _refused(lambda: budget_dict(result, model, p), "predicted_accuracy is not a finite number")


# ---- device descriptors ----------------------------------------------------------------
DEVICE = 'name = "d"\nruntime = "onnxruntime"\n'


@pytest.mark.parametrize(
    "line,field",
    [('threads = "4"', "threads"), ("threads = nan", "threads"), ("aliases = 5", "aliases"),
     ("host = 3", "host"), ("threads = 99999999999", "threads")],
)  # fmt: skip
def test_a_device_descriptor_field_of_the_wrong_type_is_refused(line, field):
    _refused(lambda: _from_toml(DEVICE + line + "\n", "x.toml"), f"x.toml is not valid: {field}")


def test_a_deeply_nested_device_descriptor_is_refused():
    _refused(lambda: _from_toml(DEVICE + "a = " + "[" * 5000 + "]" * 5000, "x.toml"), "TOML")


# ---- resume files ----------------------------------------------------------------------
KEY = {"device": "cpu", "grid": [1, 197]}


@pytest.mark.parametrize(
    "timings,needle",
    [
        ([["block", 1]], "timings[0]"),  # a short row
        ([["block", [1, 2], 0, {}]], "timings[0]"),  # a list as the token count
        ([["block", 1, 0, {"median_ms": "fast"}]], "median_ms"),
        (
            [
                [
                    "block",
                    1,
                    0,
                    {"median_ms": -2.35, "p90_ms": 1, "min_ms": 1, "max_ms": 1, "runs": 3},
                ]
            ],
            "median_ms",
        ),  # fmt: skip
        ("all of them", "timings"),
    ],
)
def test_a_malformed_sweep_resume_file_is_refused(tmp_path, timings, needle):
    p = tmp_path / "t.json.partial.json"
    p.write_text(json.dumps({"request": KEY, "timings": timings}))
    _refused(lambda: SweepResumeFile(p, KEY), f"resume file {p} is corrupt: ", needle)


def test_a_nan_timing_in_a_resume_file_is_not_reused(tmp_path):
    p = tmp_path / "t.json.partial.json"
    row = {"median_ms": "__", "p90_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0, "runs": 3}
    text = json.dumps({"request": KEY, "timings": [["block", 1, 0, row]]})
    p.write_text(text.replace('"__"', "NaN"))
    _refused(lambda: SweepResumeFile(p, KEY), "is corrupt")


def test_a_deeply_nested_resume_file_is_refused(tmp_path):
    p = tmp_path / "t.json.partial.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    _refused(lambda: SweepResumeFile(p, KEY), "is corrupt")


@pytest.mark.parametrize(
    "points,needle",
    [
        ([{"stage": 3}], "points[0].keep_ratio"),
        (["3@0.5"], "points[0]"),
        (
            [
                {
                    "stage": 3,
                    "keep_ratio": 0.5,
                    "keep_ratios": [0.5],
                    "accuracy": 1e308,
                    "agreement_with_dense": 50.0,
                    "kl_to_dense": 0.1,
                }
            ],
            "accuracy",
        ),  # fmt: skip
    ],
)
def test_a_malformed_sensitivity_resume_file_is_refused(tmp_path, points, needle):
    p = tmp_path / "s.json.partial.json"
    p.write_text(json.dumps({"request": KEY, "points": points}))
    _refused(lambda: SensitivityResumeFile(p, KEY), f"resume file {p} is corrupt: ", needle)


# ---- found by the 5,000-case fuzz run (benchmarks/fuzz.py) -----------------------------
def test_a_denormal_measured_time_is_refused_not_divided(tmp_path):
    """A latency of 1e-320 ms is > 0, but 1 / it is infinite: the measured error of the
    table came out as inf. Times that divide are at least 1e-9 ms now."""
    from tests.test_fuzz_files import use_table, valid_table

    d = valid_table()
    d["extra"]["e2e_fit"][0]["measured_ms"] = 1e-320
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    with pytest.raises(EdgepruneError, match=r"e2e_fit\[0\]\.measured_ms"):
        use_table(p)
    d["extra"]["e2e_fit"][0]["measured_ms"] = 1e-9  # the smallest taken: finite error
    p.write_text(json.dumps(d))
    use_table(p)


def test_predicted_accuracy_stays_a_percentage_when_the_dense_figure_is_below_the_stages():
    """A file whose dense accuracy (0) is below its stages' (≈ 60-72): the additive model
    predicted 204 % top-1. Accuracy is a percentage: [0, 100]."""
    curves = {loc: ([0.3, 0.5, 1.0], [60.0, 66.0, 72.0]) for loc in (3, 6, 9)}
    s = Sensitivity(0.0, {loc: tuple(map(tuple, c)) for loc, c in curves.items()}, "top1")
    for sched in [(0.3, 0.3, 0.3), (1.0, 1.0, 1.0), (0.4, 0.7, 0.9)]:
        acc = s.predict((3, 6, 9), sched)
        assert 0.0 <= acc <= 100.0, (sched, acc)
    assert s.predict((3, 6, 9), (1.0, 1.0, 1.0)) == 100.0  # 0 + 3 × 72, kept at 100


def test_an_onnx_graph_that_loads_but_cannot_run_is_one_line(tmp_path, cli):
    """Byte flips can leave a graph ONNX Runtime loads and then fails to run (a negative
    TopK k): that was onnxruntime's own exception, through bench and evaluate."""
    import onnx
    from onnx import TensorProto, helper

    from edgeprune.runtimes.onnxruntime import OnnxRuntimeRunner

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])
    y = helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 1])
    i = helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 1])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [-1])
    node = helper.make_node("TopK", ["input", "k"], ["values", "indices"])
    graph = helper.make_graph([node], "g", [x], [y, i], initializer=[k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    runner = OnnxRuntimeRunner(threads=1)
    runner.load(path)  # it loads
    with pytest.raises(EdgepruneError, match="onnxruntime cannot run the model: .*k must not"):
        runner.run(np.ones((1, 10), np.float32))
    code, _, err = cli("bench", path, "--device", "cpu", "--max-time", "1")
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: onnxruntime cannot run the model"), err
