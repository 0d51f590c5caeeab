"""predict / budget / validate-profile / --budget on a REAL table measured here
(quick onnxruntime sweep of deit_tiny, 1 thread), and their bad inputs."""

from __future__ import annotations

import json

import pytest

from edgeprune.budget.file import resolve_with_budget
from edgeprune.core.source import resolve
from edgeprune.latency.model import load_model
from edgeprune.training.loss import LatencyAwareSparsityLoss
from tests.profile_helper import measure_table, scaled_table, synthetic_table

# the table measured here may be noisier than an automatic margin absorbs (``budget``
# refuses it then, issue 34): tests that are not about the margin state one
MARGIN = ("--margin", "5%")
# --verify and re-anchoring compare the table's sweep with a measurement made minutes
# later: beside other test processes the two see different loads (a run on three
# processes measured the halved table's scale at 1.44 and at 4 instead of 2, and a
# --verify run failed once), so these run alone
QUIET = pytest.mark.quiet


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    p = tmp_path_factory.mktemp("prof") / "cpu_deit_tiny.json"
    measure_table(
        "deit_tiny",
        "dynamicvit",
        block_tokens=(1, 50, 100, 150, 197),
        rounds=8,
    ).save(p)
    return p


def test_measured_table_is_valid_and_marked_measured(profile):
    m = load_model(profile)
    assert m.table.measured is True and m.table.arch.name == "deit_tiny"
    assert "dynamicvit" in m.table.selectors


def test_predict_json_matches_library(cli, profile):
    code, out, _ = cli("predict", "deit_tiny:dynamicvit@0.7", "--profile", profile, "--json")
    assert code == 0
    d = json.loads(out)
    lib = load_model(profile).predict(resolve("deit_tiny:dynamicvit@0.7").plan)
    assert abs(d["predicted_ms"] - lib.total_ms) < 1e-9
    assert len(d["blocks_ms"]) == 12 and d["tokens_per_block"][-1] == 68
    code, out, _ = cli("predict", "deit_tiny:dynamicvit@0.7", "--profile", profile, "--verbose")
    assert code == 0 and "block 11" in out and "total" in out


def test_budget_predict_loss_agree_and_budget_file_drives_export(cli, profile, tmp_path):
    dense = load_model(profile).predict(resolve("deit_tiny").plan).total_ms
    target = round(0.6 * dense, 3)
    b = tmp_path / "b.json"
    code, out, err = cli(
        "budget", "--profile", profile, "--target-ms", target, "--out", b, "--json", *MARGIN
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["predicted_ms"] <= target and d["method"] == "dynamicvit" and d["locs"] == [3, 6, 9]
    assert (tmp_path / "b.pareto.png").stat().st_size > 1000
    saved = json.loads(b.read_text())
    assert saved["keep_ratios"] == d["keep_ratios"] and saved["profile"]["sha256"]
    # predict with --budget gives the same number
    code, out, _ = cli("predict", "deit_tiny", "--profile", profile, "--budget", b, "--json")
    assert code == 0 and abs(json.loads(out)["predicted_ms"] - d["predicted_ms"]) < 1e-6
    # the loss built from the budget file alone agrees too
    import torch

    crit = LatencyAwareSparsityLoss(b)  # aims at the budget's aim: the target less its margin
    assert crit.target_ms == pytest.approx(saved["aim_ms"]) and saved["aim_ms"] <= target
    plan = resolve("deit_tiny:dynamicvit", keep=tuple(d["keep_ratios"])).plan
    masks = []
    for s in plan.selectors:
        m = torch.zeros(1, 196)
        m[:, : s.tokens_out - 1] = 1
        masks.append(m)
    assert abs(float(crit.predicted_ms(masks)) - d["predicted_ms"]) < 1e-6
    # inspect --budget sets the schedule
    code, out, _ = cli("inspect", "deit_tiny", "--budget", b, "--json")
    assert code == 0 and json.loads(out)["tokens_per_block"] == d["tokens_per_block"]


def test_budget_fps_dense_and_unreachable(cli, profile, tmp_path):
    code, out, _ = cli(
        "budget", "--profile", profile, "--target-fps", 1, "--out", tmp_path / "d.json", *MARGIN
    )
    assert code == 0 and "already meets" in out
    before = set(tmp_path.iterdir())
    code, _, err = cli(
        "budget", "--profile", profile, "--target-ms", 0.5, "--out", tmp_path / "u.json", *MARGIN
    )
    assert code == 2 and "unreachable" in err and "ms" in err
    assert len(err.strip().splitlines()) == 1
    assert set(tmp_path.iterdir()) == before


def test_validate_profile_tiny(cli, profile, tmp_path):
    png = tmp_path / "v.png"
    code, out, err = cli(
        "validate-profile", profile, "--configs", 2, "--rounds", 5, "--plot", png, "--json"
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["configs"] == 2 and png.stat().st_size > 1000
    # the median error is the median of |predicted − measured| / measured over the models
    errors = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in d["results"]]
    assert len(errors) == 2
    assert d["median_rel_error"] == pytest.approx(sum(errors) / 2, rel=1e-9)
    # its verdict is written into the table (issue 34): untrusted above a 10 % median error
    v = json.loads(profile.read_text())["extra"]["validation"]
    assert v["median_error"] == d["median_rel_error"] == d["recorded"]["median_error"]
    assert v["trusted"] == (d["median_rel_error"] <= 0.10)
    assert d["recorded"]["table"] == str(profile)
    assert all(r["measured_ms"] > 0 for r in d["results"])
    assert 0 < d["noise"] < 10  # (p90 − p10) / median of the runs, median over models
    code, text, err = cli("validate-profile", profile, "--configs", 1, "--rounds", 3,
                          "--plot", png, "--force")  # fmt: skip
    assert code == 0 and "noise: a model's runs spread" in text, err


def test_bad_inputs_one_line_exit_2_nothing_written(cli, profile, tmp_path):
    d = tmp_path
    (d / "corrupt.json").write_text("{not json")
    good = json.loads(profile.read_text())
    (d / "v9.json").write_text(json.dumps({**good, "version": 9}))
    small = {
        **good,
        "arch": {**good["arch"], "name": "deit_small", "embed_dim": 384, "num_heads": 6},
    }
    (d / "small.json").write_text(json.dumps(small))
    (d / "b1.json").write_text(json.dumps({**good, "batch": 4}))
    out = d / "o.json"
    cases = {
        "target 0": (
            ["budget", "--profile", profile, "--target-ms", "0", "--out", out],
            "positive",
        ),
        "target neg": (
            ["budget", "--profile", profile, "--target-ms=-5", "--out", out],
            "positive",
        ),
        "target nan": (
            ["budget", "--profile", profile, "--target-ms", "nan", "--out", out],
            "positive",
        ),
        "both targets": (
            [
                "budget",
                "--profile",
                profile,
                "--target-ms",
                "5",
                "--target-fps",
                "30",
                "--out",
                out,
            ],
            "exactly one",
        ),
        "corrupt": (
            ["budget", "--profile", d / "corrupt.json", "--target-ms", "5", "--out", out],
            "not JSON",
        ),
        "version": (["predict", "deit_tiny", "--profile", d / "v9.json"], "version 9"),
        "missing profile": (
            ["predict", "deit_tiny", "--profile", d / "nope.json"],
            "does not exist",
        ),
        "wrong arch": (
            ["predict", "deit_tiny:dynamicvit", "--profile", d / "small.json"],
            "is for deit_small, but the model is deit_tiny",
        ),
        "wrong batch": (
            ["predict", "deit_tiny", "--profile", d / "b1.json"],
            "measured at batch 4, but batch 1",
        ),
        "missing budget": (
            ["export", "deit_tiny", "--budget", d / "nob.json", "--out", d / "m.onnx"],
            "does not exist",
        ),
        "budget not json": (["inspect", "deit_tiny", "--budget", d / "corrupt.json"], "not JSON"),
        "bad schedule": (
            ["budget", "--profile", profile, "--target-ms", "5", "--schedule", "x", "--out", out],
            "schedule",
        ),
        "validate configs": (
            ["validate-profile", profile, "--configs", "0", "--plot", d / "v.png"],
            "configs",
        ),
    }
    before = set(d.rglob("*"))
    for name, (args, needle) in cases.items():
        code, _, err = cli(*args)
        assert code == 2, (name, code, err)
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        assert needle in lines[0], (name, lines[0])
    assert set(d.rglob("*")) == before


def test_budget_margin_auto_given_and_refused(cli, profile, tmp_path):
    from edgeprune.latency.model import measured_error

    dense = load_model(profile).predict(resolve("deit_tiny").plan).total_ms
    target = round(0.6 * dense, 3)
    err_frac, parts = measured_error(load_model(profile).table)
    assert "noise" in parts and err_frac == max(parts.values())

    def run(*extra):
        code, out, err = cli("budget", "--profile", profile, "--target-ms", target,
                             "--out", tmp_path / "m.json", "--force", "--json", *extra)  # fmt: skip
        assert code == 0, err
        return json.loads(out)

    if err_frac <= 0.10:  # the margin is the measured error itself
        auto = run()
        assert auto["margin"] == pytest.approx(err_frac)
        assert auto["margin_source"].startswith("auto: the table's measured error (noise")
        assert auto["predicted_ms"] <= target * (1 - auto["margin"]) + 1e-9
    else:  # measured on a busy machine: refused, not capped (issue 34)
        code, _, err = cli("budget", "--profile", profile, "--target-ms", target,
                           "--out", tmp_path / "m.json", "--force")  # fmt: skip
        assert code == 2 and "above the 10% an automatic margin can absorb" in err
        assert len(err.strip().splitlines()) == 1
    zero, five = run("--margin", "0"), run("--margin", "5%")
    assert zero["margin"] == 0 and zero["predicted_ms"] <= target
    assert five["margin"] == 0.05 and five["predicted_ms"] <= 0.95 * target + 1e-9
    assert five["aim_ms"] == pytest.approx(0.95 * target)
    assert zero["predicted_ms"] >= five["predicted_ms"]
    for bad in ("lots", "60%", "-1"):
        code, _, err = cli("budget", "--profile", profile, "--target-ms", target,
                           "--out", tmp_path / "x.json", "--margin", bad)  # fmt: skip
        assert code == 2 and "--margin" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x.json").exists()


@QUIET
def test_budget_verify_measures_the_choice_against_dense(cli, profile, tmp_path):
    dense = load_model(profile).predict(resolve("deit_tiny").plan).total_ms
    target = round(0.6 * dense, 3)
    out_file = tmp_path / "v.json"
    code, out, err = cli("budget", "--profile", profile, "--target-ms", target, "--out", out_file,
                         "--verify", "--rounds", 3, "--json", *MARGIN)  # fmt: skip
    assert code in (0, 1) and out, err
    v = json.loads(out)["verification"]
    assert v["measured_ms"] > 0 and v["dense_measured_ms"] > v["measured_ms"] * 0.9
    assert v["met"] == (v["measured_ms"] <= target) and code == (0 if v["met"] else 1), err
    assert v["runtime"].startswith("onnxruntime ") and v["rounds"] == 3
    assert json.loads(out_file.read_text())["verification"] == v
    # the human output says the verdict in words
    code2, text, _ = cli("budget", "--profile", profile, "--target-ms", target,
                         "--out", out_file, "--force", "--verify", "--rounds", 3,
                         *MARGIN)  # fmt: skip
    assert ("budget met when measured" in text) == (code2 == 0)
    assert ("budget NOT met when measured" in text) == (code2 == 1)


@QUIET
def test_budget_verify_refuses_to_call_a_missed_budget_met(cli, profile, tmp_path):
    """A table whose every time was divided by 5 predicts 5× too fast: the budget it
    gives cannot hold when measured, and --verify --no-reanchor (the table's own choice)
    must say so (exit 1). Re-anchored, the target is out of reach on the machine as it
    is: the search's unreachable error (exit 2), with the anchor figures."""
    from edgeprune.latency.table import load

    p = tmp_path / "too_fast.json"
    scaled_table(load(profile), 1 / 5).save(p)
    dense = load_model(p).predict(resolve("deit_tiny").plan).total_ms
    args = ("budget", "--profile", p, "--target-ms", round(0.8 * dense, 4),
            "--out", tmp_path / "f.json", "--verify", "--rounds", 3, *MARGIN)  # fmt: skip
    code, out, err = cli(*args, "--no-reanchor", "--verbose")
    assert code == 1, err
    assert "budget NOT met when measured" in out and "machine drift" in out
    assert "not re-anchored (--no-reanchor)" in out
    assert json.loads((tmp_path / "f.json").read_text())["verification"]["reanchor"] is None
    code, out, err = cli(*args, "--force")
    assert code == 2 and "is unreachable on this profile re-anchored to this machine now" in err
    assert "dense measured" in err and len(err.strip().splitlines()) == 1, err


# ---- budget --verify re-anchors the table to the machine's speed now (issue #14) -------
@pytest.fixture(scope="module")
def halved(profile, tmp_path_factory):
    """A table whose times were all halved (it says the machine is twice as fast as it
    is), and ``budget --verify`` on it at 0.6 × the real dense (1.2 × the table's),
    re-anchored and not: {"reanchor": BudgetRun, "table": BudgetRun, "target": ms}."""
    from edgeprune.budget.run import BudgetRequest, make_budget
    from edgeprune.latency.table import load

    d = tmp_path_factory.mktemp("halved")
    p = d / "half.json"
    scaled_table(load(profile), 0.5).save(p)
    target = round(1.2 * load_model(p).predict(resolve("deit_tiny").plan).total_ms, 3)
    runs = {
        name: make_budget(
            BudgetRequest(
                profile=p,
                target_ms=target,
                out=d / f"{name}.json",
                no_plot=True,
                verify=True,
                rounds=3,
                reanchor=name == "reanchor",
                margin=MARGIN[1],
            )
        )
        for name in ("reanchor", "table")
    }
    return {**runs, "target": target, "profile": p}


@QUIET
def test_reanchor_scales_the_table_to_the_machine_and_prunes_harder(halved):
    re, table = halved["reanchor"], halved["table"]
    a = re.verification.reanchor
    # the table says twice as fast as the machine is: a scale of 2, moved by what else runs
    # beside the table's sweep and beside this measurement (a CI run on three processes
    # over two cores measured 1.44); above 1.2 the target (1.2 × the table's dense) is
    # below the measured dense, which is what the rest checks
    assert 1.25 < a.scale < 3, a
    r = re.verification.refined  # set when the re-anchored pick measured outside the band
    assert re.result.scale == pytest.approx(r["scale"] if r else a.scale)
    assert table.result.status == "dense"  # 1.2 × the table's dense: dense "meets" it
    assert re.result.status == "ok" and re.result.predicted_ms <= halved["target"]
    assert re.result.chosen.kept_tokens < table.result.chosen.kept_tokens
    assert a.table_choice["status"] == "dense" and a.choice["status"] == "ok"


@QUIET
def test_reanchored_budget_file_records_the_anchor_and_the_verified_schedule(halved):
    from edgeprune.budget.file import load_budget
    from edgeprune.render.tables import budget_lines

    run = halved["reanchor"]
    d = json.loads(run.path.read_text())
    v, a = d["verification"], d["verification"]["reanchor"]
    for k in ("dense_table_ms", "dense_measured_ms", "scale", "table_choice", "choice"):
        assert k in a, k
    assert a["scale"] == pytest.approx(a["dense_measured_ms"] / a["dense_table_ms"])
    # the re-anchored pick, or, when it measured outside the band, the refined one
    r = v["refined"]
    first = r["first"] if r else a["choice"]
    assert first["keep_ratios"] == a["choice"]["keep_ratios"]
    scale = r["scale"] if r else a["scale"]
    assert d["reanchor_scale"] == scale
    # the file's schedule is the one verified, its prediction the re-anchored one
    assert d["keep_ratios"] == list(run.result.chosen.keep_ratios)
    if not r:
        assert d["keep_ratios"] == a["choice"]["keep_ratios"]
        assert d["predicted_ms"] == a["choice"]["predicted_ms"]
    assert d["predicted_ms"] == v["predicted_ms"]
    assert v["table_predicted_ms"] == d["table_predicted_ms"]
    assert v["predicted_ms"] == pytest.approx(v["table_predicted_ms"] * scale)
    assert resolve_with_budget("deit_tiny", run.path).plan == run.result.chosen.plan
    b = load_budget(run.path)  # the loss aims at the aim (target less margin), table's terms
    assert LatencyAwareSparsityLoss(b).target_ms == pytest.approx(d["aim_ms"] / scale)
    text = "\n".join(budget_lines(run, verbose=True))
    assert "re-anchored: dense measured" in text and "the table alone picks dense" in text


@QUIET
def test_refine_rescales_by_the_picks_own_measurement(profile):
    """A re-anchored pick that measured 30 % over its prediction is chosen again with the
    table × (measured / table prediction), 2 % under the target: it prunes harder; one
    that measured as predicted but aimed 5 % under keeps more tokens (room was left)."""
    from functools import partial

    from edgeprune.budget.search import search
    from edgeprune.budget.verify import REFINE_MARGIN, _refine

    model = load_model(profile)
    dense = model.predict(resolve("deit_tiny").plan).total_ms
    choose = partial(search, model, 0.6 * dense, "dynamicvit", margin=0.05)
    first = choose(scale=1.0)
    again = _refine(choose, first, 1.3 * first.chosen.predicted_ms, lambda _m: None)
    assert again is not None and again.scale == pytest.approx(1.3)
    assert again.margin == REFINE_MARGIN and again.predicted_ms <= again.aim_ms
    assert again.chosen.kept_tokens < first.chosen.kept_tokens
    roomier = _refine(choose, first, first.chosen.predicted_ms, lambda _m: None)
    assert roomier is not None and roomier.chosen.kept_tokens > first.chosen.kept_tokens


@QUIET
def test_no_reanchor_verifies_the_tables_own_choice(halved):
    from edgeprune.budget.search import resolve_margin, search

    run = halved["table"]
    model = load_model(halved["profile"])
    frac, _ = resolve_margin(MARGIN[1], model.table)
    own = search(model, halved["target"], "dynamicvit", margin=frac)
    assert run.result.scale == 1.0 and run.verification.reanchor is None
    assert run.result.chosen.keep_ratios == own.chosen.keep_ratios
    assert run.verification.predicted_ms == run.verification.table_predicted_ms == own.dense_ms
    d = json.loads(run.path.read_text())
    assert d["reanchor_scale"] == 1.0 and d["verification"]["reanchor"] is None


def test_search_at_a_scale_is_the_search_at_the_target_divided_by_it():
    from edgeprune.budget.search import UnreachableTarget, search
    from edgeprune.latency.model import LatencyModel

    m = LatencyModel(synthetic_table())
    for schedule in ("geometric", "free"):
        a = search(m, 20.0, schedule=schedule, margin=0.05, scale=2.0)
        b = search(m, 10.0, schedule=schedule, margin=0.05)
        assert a.chosen.keep_ratios == b.chosen.keep_ratios and a.target_ms == 20.0
        assert a.predicted_ms == pytest.approx(2 * b.chosen.predicted_ms)
        assert a.margin_ms == pytest.approx(20.0 - a.predicted_ms)
    with pytest.raises(UnreachableTarget, match=r"re-anchored .* predictions × 50\.000"):
        search(m, 20.0, scale=50.0)


def _anchored(anchor_dense: float, dense_now: float, pick: float, target: float):
    from edgeprune.budget.verify import Anchor, Verification

    ch = {"status": "ok", "keep_ratios": [0.4], "table_predicted_ms": 1.0, "predicted_ms": 1.0}
    anchor = Anchor(
        dense_table_ms=7.7, dense_measured_ms=anchor_dense, rounds=20, burst=3, table_choice=ch,
        choice=ch,
    )  # fmt: skip
    return Verification(
        target_ms=target, predicted_ms=3.48, table_predicted_ms=3.65, measured_ms=pick,
        measured_p90_ms=pick, dense_predicted_ms=7.7, dense_measured_ms=dense_now,
        runtime="onnxruntime", threads=2, rounds=30, burst=3, reanchor=anchor,
    )  # fmt: skip


def test_a_machine_that_changes_speed_during_the_check_is_reported_not_hidden():
    """Figures of a real 2-thread run on a VM whose second core slowed mid-check: dense
    7.38 ms at the re-anchor, 10.30 ms beside the pick (5.04 ms, target 3.87 ms). The
    verdict stays the measurement (not met); the report gives the move and the pick at
    the anchor's speed (its ratio to dense holds: 5.04 × 7.38 / 10.30 = 3.61 ms)."""
    from edgeprune.render.tables import verification_lines

    v = _anchored(7.38, 10.30, 5.04, 3.87)
    assert not v.met and v.vs_target == pytest.approx(5.04 / 3.87 - 1)
    assert v.moved == pytest.approx(10.30 / 7.38 - 1)
    assert v.at_anchor_ms == pytest.approx(5.04 * 7.38 / 10.30)
    assert v.at_anchor_vs_target == pytest.approx(5.04 * 7.38 / 10.30 / 3.87 - 1)
    d = v.to_dict()
    assert d["moved"] == v.moved and d["at_anchor_ms"] == v.at_anchor_ms and d["met"] is False
    text = "\n".join(verification_lines(v))
    assert "budget NOT met" in text and "changed speed during the check" in text
    assert f"{v.at_anchor_ms:.3f} ms" in text and "+39.6%" in text
    steady = _anchored(7.38, 7.45, 3.70, 3.87)  # moved 0.9 %: nothing to say
    assert steady.met and "changed speed" not in "\n".join(verification_lines(steady))
    from edgeprune.budget.verify import Verification

    plain = Verification(
        target_ms=3.87, predicted_ms=3.5, table_predicted_ms=3.5, measured_ms=3.7,
        measured_p90_ms=3.8, dense_predicted_ms=7.7, dense_measured_ms=7.6,
        runtime="onnxruntime", threads=1, rounds=30, burst=3,
    )  # fmt: skip
    assert plain.moved is None and plain.at_anchor_ms is None  # --no-reanchor


def test_refinement_decides_on_the_pick_at_the_anchors_speed_when_the_machine_moved():
    """A real 2-thread case: the re-anchor saw dense at 7.12 ms; the first pick measured
    5.71 ms beside a dense of 9.92 ms (the machine slowed 39 %), target 4.26 ms. Raw, it
    is 34 % over and was refined by a scale that chased the slowdown (the refined pick
    then measured 22.8 % under, back at full speed). At the anchor's speed it is 4.10 ms,
    3.8 % under the target: within the band, kept. On a steady machine (dense within
    5 % of the anchor) the raw figure decides, as before."""
    from edgeprune.budget.verify import (
        MOVED_NOTE,
        REFINE_BAND,
        Anchor,
        at_anchor_speed,
        needs_refining,
        refine_basis,
    )

    ch = {"status": "ok", "keep_ratios": [0.4], "table_predicted_ms": 1.0, "predicted_ms": 1.0}
    anchor = Anchor(
        dense_table_ms=7.74, dense_measured_ms=7.12, rounds=20, burst=3, table_choice=ch,
        choice=ch,
    )  # fmt: skip
    assert needs_refining(5.71, 4.26)  # the raw figure
    first = refine_basis(5.71, 9.92, anchor)
    assert first == at_anchor_speed(5.71, 9.92, anchor) == pytest.approx(5.71 * 7.12 / 9.92)
    assert not needs_refining(first, 4.26)
    steady = 7.12 * (1 + MOVED_NOTE * 0.9)
    assert refine_basis(4.40, steady, anchor) == 4.40  # steady: the measurement decides
    assert needs_refining(refine_basis(4.40, steady, anchor), 4.26)
    assert refine_basis(5.71, 9.92, None) == at_anchor_speed(5.71, 9.92, None) == 5.71
    assert needs_refining(4.26 * (1 - REFINE_BAND) * 0.99, 4.26)  # too far under
    assert not needs_refining(4.26, 4.26) and needs_refining(4.27, 4.26)
