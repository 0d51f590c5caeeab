"""Numbers a user can act on (issue 34, items 3–5): the automatic margin follows the
table's measured error and refuses one too large to absorb; ``validate`` marks a table
untrusted in its file and every command using it says so; ``budget --verify``'s
refinement lands on the schedule that keeps the most under the target (a fake runner
whose latency is a closed form of the token plan knows the right answer); and
``budget --sensitivity`` keeps to the measured keep ratios, and sets aside measurements
that cannot tell schedules apart."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial

import pytest

from edgeprune.budget.search import UnreachableTarget, indistinct, load_sensitivity, search
from edgeprune.budget.verify import REFINE_BAND, REFINE_ROUNDS, verify_budget
from edgeprune.core.images import write_demo_images
from edgeprune.core.methods.base import geometric
from edgeprune.core.source import resolve
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import load
from edgeprune.profiling.validate import ConfigResult, ValidationReport, record_verdict
from edgeprune.runtimes.timing import Timing
from edgeprune.training.finetune import FinetuneRequest, finetune_to_file
from tests.accuracy_helper import HEADS, LOCS, tiny_table, write_dense
from tests.profile_helper import synthetic_table
from tests.training_helper import write_imagenet

TARGET = 10.0  # ms; the synthetic table's dense model predicts 15.06 ms


def _table(path, noise: float | None = None, table=None):
    """The synthetic table (or ``table``) saved at ``path``, recording ``noise`` as its
    points' median spread (the measured error a profile sweep writes)."""
    t = table or synthetic_table()
    extra = dict(t.extra)
    if noise is not None:
        extra["noise"] = {"points": 9, "median_spread": noise, "p90_spread": noise}
    replace(t, extra=extra).save(path)
    return path


def _text(out: str) -> str:
    """Printed output with the console's line wrapping undone."""
    return " ".join(out.split())


def _errors(lines: str) -> list[str]:
    return [ln for ln in lines.strip().splitlines() if ln.strip()]


# ---- 3. margins from evidence ------------------------------------------------------------
def test_the_automatic_margin_is_the_measured_error_uncapped(cli, tmp_path):
    for noise in (0.04, 0.08, 0.10):
        p = _table(tmp_path / f"t{noise}.json", noise)
        code, out, err = cli("budget", "--table", p, "--target-ms", TARGET,
                             "--out", tmp_path / "b.json", "--force", "--json")  # fmt: skip
        assert code == 0, err
        d = json.loads(out)
        assert d["margin"] == pytest.approx(noise)
        assert d["margin_source"] == f"auto: the table's measured error (noise {noise:.1%})"
        assert d["predicted_ms"] <= TARGET * (1 - noise) + 1e-9


def test_a_measured_error_above_a_useful_margin_is_refused_not_capped(cli, tmp_path):
    """The newcomer's case: 24 % noise, and budget used to aim 10 % under the target
    without a word. Now: one line, exit 2, nothing written; --margin still works and is
    echoed with the table's error beside it."""
    p = _table(tmp_path / "noisy.json", 0.24)
    out_file = tmp_path / "b.json"
    code, out, err = cli("budget", "--table", p, "--target-ms", TARGET, "--out", out_file)
    assert code == 2 and out == ""
    (line,) = _errors(err)
    assert line.startswith("error: the table's measured error is 24% (noise 24.0%)")
    assert "above the 10% an automatic margin can absorb" in line
    assert "a quieter machine, more runs" in line and "--margin" in line
    assert not out_file.exists()
    code, out, err = cli("budget", "--table", p, "--target-ms", TARGET, "--out", out_file,
                         "--margin", "5%", "--no-plot")  # fmt: skip
    assert code == 0, err
    d = json.loads(out_file.read_text())
    assert d["margin"] == 0.05 and d["predicted_ms"] <= 0.95 * TARGET + 1e-9
    assert d["margin_source"] == (
        "given: --margin 5%; the table's measured error is 24.0% (noise 24.0%)"
    )
    assert "aimed 5.0% under the target" in _text(out) and "measured error is 24.0%" in _text(out)
    code, out, err = cli("budget", "--table", p, "--target-ms", TARGET, "--out", out_file,
                         "--margin", "0", "--no-plot", "--force")  # fmt: skip
    assert code == 0 and "aimed 0.0% under the target" in _text(out), err


def _report(errors: list[float], profile="t.json") -> ValidationReport:
    """A validation whose schedules measured ``errors`` off (predicted 10 ms each)."""
    results = tuple(
        ConfigResult(
            keep_ratios=(0.5, 0.25, 0.125),
            predicted_ms=10.0,
            measured_ms=10.0 / (1 - e),
            measured_p90_ms=11.0 / (1 - e),
        )  # fmt: skip
        for e in errors
    )
    return ValidationReport(profile=profile, method="dynamicvit", threads=1, rounds=3,
                            results=results)  # fmt: skip


def test_validation_marks_the_table_file_untrusted_readable_by_older_readers(tmp_path):
    p = _table(tmp_path / "t.json", 0.02)
    before = json.loads(p.read_text())
    rep = record_verdict(_report([0.40, 0.47, 0.52]), p)
    after = json.loads(p.read_text())
    v = after["extra"]["validation"]
    assert v["trusted"] is False and v["limit"] == 0.10 and v["configs"] == 3
    assert v["median_error"] == pytest.approx(0.47) and v["date"]
    assert rep.recorded["table"] == str(p) and rep.recorded["trusted"] is False
    # only extra.validation was added: same schema and version, every other key as it was
    assert after["extra"].pop("validation") and after == before
    t = load(p)
    assert not t.trusted and t.validation["median_error"] == pytest.approx(0.47)
    # a later validation within the limit clears the mark
    record_verdict(_report([0.02, 0.03, 0.05]), p)
    assert load(p).trusted and load(p).validation["median_error"] == pytest.approx(0.03)


def _one_warning(err: str) -> str:
    (line,) = [ln for ln in err.strip().splitlines() if ln.startswith("warning:")]
    return line


def test_every_command_using_an_untrusted_table_says_so(cli, tmp_path):
    p = _table(tmp_path / "t.json", 0.02)
    record_verdict(_report([0.40, 0.47, 0.52]), p)
    runs = {
        "predict": ("predict", "deit_tiny:dynamicvit@0.7", "--table", p),
        "predict --json": ("predict", "deit_tiny:dynamicvit@0.7", "--table", p, "--json"),
        "budget": ("budget", "--table", p, "--target-ms", TARGET, "--out", tmp_path / "b.json",
                   "--no-plot", "--force"),
        "table-info": ("table-info", p),
    }  # fmt: skip
    for name, args in runs.items():
        code, out, err = cli(*args)
        assert code == 0, (name, err)
        w = _one_warning(err)
        assert "is UNTRUSTED" in w and "median error of 47.0%" in w and "10% limit" in w, name
    code, out, _ = cli("table-info", p)
    assert "UNTRUSTED: median error 47.0% on 3 whole models (validated 20" in _text(out)
    # trusted again: nothing to say
    record_verdict(_report([0.01, 0.02, 0.03]), p)
    code, _, err = cli("predict", "deit_tiny:dynamicvit@0.7", "--table", p)
    assert code == 0 and "warning" not in err


def test_finetunes_loss_on_an_untrusted_table_says_so(cli, tmp_path):
    p = tmp_path / "tiny.json"
    _table(p, table=tiny_table())
    record_verdict(_report([0.3, 0.3, 0.3]), p)
    write_dense(tmp_path / "dense.pth")
    write_imagenet(tmp_path / "data", train=2, val=1)
    req = FinetuneRequest(
        src=str(tmp_path / "dense.pth"), data=tmp_path / "data", profile=p, target_ms=3.0,
        method="dynamicvit", epochs=1, batch=4, locs=LOCS, heads=HEADS, threads=1,
    )  # fmt: skip
    res = finetune_to_file(req, tmp_path / "lib.pth")
    (w,) = res.warnings
    assert "is UNTRUSTED" in w and "30.0%" in w and res.to_dict()["warnings"] == [w]
    code, _, err = cli("finetune", tmp_path / "dense.pth", "--data", tmp_path / "data",
                       "--table", p, "--target-ms", 3, "--method", "dynamicvit", "--epochs", 1,
                       "--batch", 4, "--locs", "1,2,3", "--heads", HEADS, "--threads", 1,
                       "--out", tmp_path / "ft.pth")  # fmt: skip
    assert code == 0 and "30.0%" in _one_warning(err), err


def test_validate_writes_its_verdict_into_the_table(cli, tmp_path, monkeypatch):
    """``edgeprune validate`` records what it measured (here a canned report standing
    in for the whole models timed) and says where."""
    import edgeprune.profiling.validate as validate

    p = _table(tmp_path / "t.json", 0.02)
    monkeypatch.setattr(validate, "validate_profile", lambda model, **_: _report([0.4, 0.47, 0.5]))
    code, out, err = cli("validate", p, "--plot", tmp_path / "v.png")
    assert code == 0, err
    assert "UNTRUSTED: median error 47.0% > 10% (recorded in " in _text(out)
    assert load(p).trusted is False
    code, out, err = cli("validate", p, "--plot", tmp_path / "v.png", "--json", "--force")
    assert json.loads(out)["recorded"]["trusted"] is False


# ---- 4. verify lands on the aim ------------------------------------------------------------
def true_ms(plan) -> float:
    """The fake machine: a closed form of the tokens each block sees, more convex than
    the synthetic table (whose ratio to it changes with the schedule, so no one scale
    fits every pick)."""
    return 0.2 + sum(0.03 + 0.003 * n + 3e-5 * n * n for n in plan.attn_tokens)


class FakeModels:
    """``LocalModels`` on the fake machine: a "loaded" model is its token plan, timed at
    ``truth`` (default ``true_ms``) exactly; keeps what was timed."""

    timed: list = []
    truth = staticmethod(true_ms)

    def __init__(self, runtime, threads, batch, progress=None, kernels=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def load(self, source, label):
        return source.plan

    def time(self, runners, rounds=30, burst=3):
        FakeModels.timed.append(list(runners))
        return [Timing.from_samples([FakeModels.truth(p)] * 3) for p in runners]


@pytest.fixture(scope="module")
def geometric_plans():
    """Every geometric schedule the search weighs (r on a 0.001 grid), by token plan."""
    plans = {}
    for i in range(1, 1001):
        try:
            plan = resolve("deit_tiny:dynamicvit", keep=geometric(i / 1000, 3)).plan
        except Exception:  # keeps no patch at some stage
            continue
        plans.setdefault(plan.attn_tokens, plan)
    return list(plans.values())


def _verify(target: float, truth=true_ms, **kw):
    table = synthetic_table()
    model = LatencyModel(replace(table, device={**table.device, "runtime": "onnxruntime"}))
    FakeModels.timed, FakeModels.truth = [], staticmethod(truth)
    choose = partial(search, model, target, "dynamicvit")
    return verify_budget(model, choose, None, rounds=3, models=FakeModels, **kw)


@pytest.mark.parametrize("share", [0.45, 0.6, 0.8])
def test_refinement_finds_the_schedule_keeping_the_most_under_the_target(share, geometric_plans):
    """With no tolerance, the refinement ends on the right answer: of all the schedules
    the search weighs, the one with the most tokens whose true latency ≤ the target."""
    target = share * true_ms(resolve("deit_tiny").plan)
    fits = [p for p in geometric_plans if true_ms(p) <= target]
    right = max(fits, key=lambda p: sum(p.attn_tokens))
    res, v = _verify(target, tolerance=0.0, refine_rounds=12)
    assert res.chosen.plan.attn_tokens == right.attn_tokens
    assert v.met and v.measured_ms == pytest.approx(true_ms(right))
    assert v.refined["on_aim"] is False and v.refined["margin"] == 0.0  # exact: no band


@pytest.mark.parametrize("share", [0.45, 0.6, 0.8])
def test_refinement_stops_within_the_band_under_the_target(share, geometric_plans):
    """With the default tolerance it stops at the first pick within 5 % under the
    target (a few picks measured), never far under it."""
    target = share * true_ms(resolve("deit_tiny").plan)
    res, v = _verify(target)
    assert target * (1 - REFINE_BAND) <= v.measured_ms <= target
    assert v.measured_ms == pytest.approx(true_ms(res.chosen.plan))
    picks = [r for r in FakeModels.timed if len(r) == 2]  # each pick timed beside dense
    assert len(picks) <= 1 + REFINE_ROUNDS
    if v.refined:
        assert v.refined["on_aim"] and len(v.refined["tries"]) == len(picks) - 1


def test_a_pick_far_under_the_target_climbs_back_to_it():
    """The newcomer's case: the re-anchored pick measured 22 % under the target (the
    table overstates what pruning costs here). The refinement climbs back within 5 %."""

    def cheap(plan):  # pruning saves more here than the table says
        return 0.1 + sum(0.0082 * n + 1e-5 * n * n for n in plan.attn_tokens)

    target = 0.6 * cheap(resolve("deit_tiny").plan)
    res, v = _verify(target, cheap)
    first = v.refined["first"]
    assert first["measured_ms"] < target * (1 - REFINE_BAND)  # far under at first
    assert target * (1 - REFINE_BAND) <= v.measured_ms <= target
    assert v.measured_ms == pytest.approx(cheap(res.chosen.plan))
    kept_first = resolve("deit_tiny:dynamicvit", keep=tuple(first["keep_ratios"])).plan
    assert sum(res.chosen.plan.attn_tokens) > sum(kept_first.attn_tokens)


# ---- 5. no extrapolation, no silent nonsense -------------------------------------------------
def _sensitivity(path, stages=None, dense=72.0, **extra):
    stages = stages or {
        "3": {"keep_ratios": [0.2, 0.5, 1.0], "accuracy": [60.0, 70.0, 72.0]},
        "6": {"keep_ratios": [0.2, 0.5, 1.0], "accuracy": [69.0, 71.0, 72.0]},
        "9": {"keep_ratios": [0.2, 0.5, 1.0], "accuracy": [71.9, 72.0, 72.0]},
    }
    path.write_text(json.dumps({"schema": "edgeprune.sensitivity", "metric": "top1",
                                "dense": dense, "stages": stages, **extra}))  # fmt: skip
    return path


def test_budget_sensitivity_keeps_to_the_measured_keep_ratios(cli, tmp_path):
    """The newcomer's case: the last stage barely matters, so a search free to go below
    the lowest measured ratio (0.2) drove it to 0.01 on a curve held flat there."""
    p, s = _table(tmp_path / "t.json"), _sensitivity(tmp_path / "s.json")
    b = tmp_path / "b.json"
    base = ("budget", "--table", p, "--target-ms", 8, "--schedule", "free",
            "--sensitivity", s, "--out", b, "--no-plot", "--force")  # fmt: skip
    code, out, err = cli(*base)
    assert code == 0, err
    d = json.loads(b.read_text())
    assert min(d["keep_ratios"]) >= 0.2 and d["extrapolated"] == []
    assert d["predicted_accuracy"] <= 72.0 and d["predicted_ms"] <= 8
    assert "EXTRAPOLATED" not in out
    # out of reach within the measured ratios: said so, with the way out
    code, _, err = cli(*base[:4], 5, *base[5:])
    (line,) = _errors(err)
    assert code == 2 and "within the sensitivity file's measured keep ratios" in line
    assert "stage 9 ≥ 0.2" in line and "--extrapolate" in line


def test_extrapolate_is_marked_in_the_output_the_file_and_the_plot(cli, tmp_path, monkeypatch):
    import edgeprune.render.plots as plots

    legends = []
    real = plots._save

    def keep_legend(fig, path, dpi=None):
        legends.extend(t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
        return real(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", keep_legend)
    p, s = _table(tmp_path / "t.json"), _sensitivity(tmp_path / "s.json")
    b, png = tmp_path / "b.json", tmp_path / "b.png"
    code, out, err = cli("budget", "--table", p, "--target-ms", 8, "--schedule", "free",
                         "--sensitivity", s, "--out", b, "--plot", png,
                         "--extrapolate")  # fmt: skip
    assert code == 0, err
    d = json.loads(b.read_text())
    assert d["keep_ratios"][-1] < 0.2
    assert d["extrapolated"] and all("< 0.2 (lowest measured)" in x for x in d["extrapolated"])
    assert "stage 9 at" in d["extrapolated"][-1]
    assert "EXTRAPOLATED below the measured keep ratios" in _text(out)
    assert any("EXTRAPOLATED" in t for t in legends) and png.stat().st_size > 1000


def test_extrapolation_reads_the_first_segment_down_never_up(tmp_path):
    s = load_sensitivity(_sensitivity(tmp_path / "s.json"))
    locs = (3, 6, 9)
    held, down = s.predict(locs, (0.1, 1.0, 1.0)), s.predict_many(locs, [(0.1, 1, 1)], True)[0]
    assert held == pytest.approx(60.0)  # the curve held at its lowest point
    assert down == pytest.approx(60.0 - 0.1 * (70.0 - 60.0) / 0.3)  # its first segment
    rising = {"3": {"keep_ratios": [0.2, 0.5], "accuracy": [70.0, 60.0]}}
    s2 = load_sensitivity(_sensitivity(tmp_path / "s2.json", rising))
    assert s2.predict_many((3,), [(0.05,)], True)[0] == pytest.approx(70.0)  # capped


def test_indistinct_measurements():
    assert indistinct([0.0] * 7, what="top-1") == "every measured top-1 is 0.00"
    assert indistinct([100.0] * 5) == "every measured value is 100.00"
    # 4 classes, 400 images: chance 25 % ± 4.3 %
    assert "at chance level (25.0 %" in indistinct([24.0, 27.5, 22.0, 25.0], 25.0, 400)
    assert indistinct([24.0, 35.0, 22.0, 25.0], 25.0, 400) is None
    assert indistinct([60.0, 70.0, 72.0], 25.0, 400) is None
    assert indistinct([60.0, 70.0, 72.0]) is None


def test_budget_sets_aside_a_file_that_cannot_tell_schedules_apart(cli, tmp_path):
    flat = {k: {"keep_ratios": [0.2, 0.5, 1.0], "accuracy": [0.0, 0.0, 0.0]} for k in "369"}
    s = _sensitivity(tmp_path / "s.json", flat, dense=0.0)
    assert load_sensitivity(s).indistinct == "every measured top1 is 0.00"
    # at chance: a file that names its classes and images
    chance = {k: {"keep_ratios": [0.5, 1.0], "accuracy": [24.0, 26.0]} for k in "369"}
    s2 = _sensitivity(tmp_path / "s2.json", chance, dense=25.5,
                      images={"classes": 4, "read": 400})  # fmt: skip
    assert "chance level" in load_sensitivity(s2).indistinct
    p, b = _table(tmp_path / "t.json"), tmp_path / "b.json"
    code, out, err = cli("budget", "--table", p, "--target-ms", TARGET, "--sensitivity", s,
                         "--out", b, "--no-plot")  # fmt: skip
    assert code == 0, err
    w = _one_warning(err)
    assert "cannot tell schedules apart (every measured top1 is 0.00)" in w
    assert "weighs kept tokens instead" in w
    d = json.loads(b.read_text())
    assert d["objective"] == "kept_tokens" and "every measured top1" in d["sensitivity_ignored"]
    plain = search(LatencyModel(synthetic_table()), TARGET, "dynamicvit")
    assert d["keep_ratios"] == list(plain.chosen.keep_ratios)


def test_sensitivity_warns_and_records_when_it_cannot_tell_schedules_apart(cli, tmp_path):
    """Random weights on a labelled folder: every top-1 is the same (or at chance)."""
    write_demo_images(tmp_path / "imgs", classes=4, per_class=1, size=40)
    out_file = tmp_path / "s.json"
    code, out, err = cli("sensitivity", "deit_tiny:dynamicvit", "--images", tmp_path / "imgs",
                         "--grid", "0.5,1", "--threads", 1, "--out", out_file)  # fmt: skip
    assert code == 0, err
    d = json.loads(out_file.read_text())
    assert d["indistinct"] and d["metric"] == "top1"
    w = _one_warning(err)
    assert "cannot tell schedules apart" in w and d["indistinct"] in w
    assert load_sensitivity(out_file).indistinct == d["indistinct"]


def test_unreachable_names_the_range_only_when_it_kept_to_one():
    m = LatencyModel(synthetic_table())
    with pytest.raises(UnreachableTarget) as e:
        search(m, 1.0, "dynamicvit")
    assert "measured keep ratios" not in e.value.one_line()
