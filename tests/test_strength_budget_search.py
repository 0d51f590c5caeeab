"""The budget search's pieces against numbers worked out by hand (benchmarks/mutation.py's
``budget_search`` module: what the end-to-end and enumeration tests let through).

The search tests use a 16-patch model (64×64 images, depth 4) with linear curves:
block(n) = 0.1·n ms, selector 0.01·n, embed + head 1.0; so DynamicViT keeping k patches
at block 2 (of 17 tokens) costs 1 + 0.1·(2·17 + 2·(k + 1)) + 0.01·17.
"""

from __future__ import annotations

import math

import pytest

from edgeprune.budget.search import (
    BudgetResult,
    Candidate,
    Sensitivity,
    UnreachableTarget,
    _best,
    _count,
    _dense,
    _free_tuples,
    _grid,
    _method_at,
    _plans,
    _Space,
    check_schedule,
    kept_tokens,
    pareto_front,
    resolve_margin,
    search,
    stage_schedule,
    target_from,
)
from edgeprune.core.arch import Arch, get_arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import get_method
from edgeprune.core.plan import TokenPlan, dense_plan
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import Curve, EndToEnd, LatencyTable, Point

SMALL = Arch("s16", embed_dim=32, num_heads=2, depth=4, img_size=64, num_classes=10)
TINY = get_arch("deit_tiny")


def line(k: float, top: int = 17) -> Curve:
    return Curve((1, top), (k, k * top), (k, k * top))


def table(
    arch: Arch = SMALL, extra: dict | None = None, method: str | None = "dynamicvit", **kw
) -> LatencyTable:
    top = arch.num_tokens
    return LatencyTable(
        device={"name": "hand", "runtime": "none", "threads": 1}, arch=arch,
        method=method, batch=1, date="by hand", measured=False, block=line(0.1, top),
        embed=Point(0.7, 0.7), head=Point(0.3, 0.3),
        selectors={"dynamicvit": line(0.01, top), "evit": line(0.01, top)},
        attn=line(0.04, top), mlp=line(0.06, top), extra=extra or {}, **kw,
    )  # fmt: skip


def one_stage_ms(k: int) -> float:
    """DynamicViT at block 2 of SMALL keeping k patches."""
    return 1.0 + 0.1 * (2 * 17 + 2 * (k + 1)) + 0.01 * 17


def cand(ratios, ms, kept=0.0, acc=None) -> Candidate:
    return Candidate(tuple(ratios), dense_plan(SMALL), ms, kept, acc)


# ---- targets, grids, counts ---------------------------------------------------------------
def test_target_from():
    assert target_from(None, 25) == 40.0 and target_from(12, None) == 12.0
    assert target_from(0.5, None) == 0.5 and target_from(None, 0.5) == 2000.0
    assert isinstance(target_from(12, None), float)
    with pytest.raises(EdgepruneError, match="^give exactly one of --target-ms and --target-fps$"):
        target_from(None, None)
    with pytest.raises(EdgepruneError, match="^--target-fps -2 is not a positive finite number$"):
        target_from(None, -2)
    with pytest.raises(EdgepruneError, match="^--target-ms 0 is not a positive finite number$"):
        target_from(0, None)
    with pytest.raises(EdgepruneError, match="^--target-ms 5 is not"):
        target_from("5", None)


def test_grid_free_tuples_and_counts():
    assert _grid(0.25) == [0.25, 0.5, 0.75, 1.0]
    assert _grid(0.2) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert _grid(1.0) == [1.0]
    assert _grid(0.02)[:3] == [0.02, 0.04, 0.06] and len(_grid(0.02)) == 50
    assert _free_tuples([0.5, 1.0], 2, True) == [(1.0, 1.0), (1.0, 0.5), (0.5, 0.5)]
    assert _free_tuples([0.5, 1.0], 2, False) == [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
    assert _count(2, 2, True) == 3 and _count(2, 2, False) == 4
    assert _count(50, 3, True) == math.comb(52, 3) and _count(10, 3, False) == 1000


def test_stage_schedule():
    assert stage_schedule(3, 1, 0.4, True) == (1.0, 0.4, 0.4)
    assert stage_schedule(3, 1, 0.4, False) == (1.0, 0.4, 1.0)
    assert stage_schedule(2, 0, 0.3, True) == (0.3, 0.3)


# ---- candidates -------------------------------------------------------------------------------
def test_kept_tokens_and_objective():
    plan = TokenPlan(SMALL, "evit", (1,), (0.5,), (17, 17, 10, 10), (17, 10, 10, 10))
    assert kept_tokens(plan) == (34 + 27 + 20 + 20) / 2
    assert cand((1.0,), 1.0, kept=12.5).objective() == 12.5
    assert cand((1.0,), 1.0, kept=12.5, acc=0.0).objective() == 0.0  # 0 % is an accuracy
    assert cand((1.0,), 1.0, kept=12.5, acc=70.0).objective() == 70.0


def test_best_meets_the_target_and_breaks_ties():
    a = cand((0.5,), 5.0, kept=10)
    b = cand((0.6,), 6.0, kept=12)
    c = cand((0.7,), 7.0, kept=14)
    assert _best([a, b, c], 6.0) is b  # at the target counts
    assert _best([a, b, c], 5.99) is a
    assert _best([a, b, c], 4.99) is None
    # equal objective: the faster one; then the larger ratios
    fast, slow = cand((0.5,), 5.0, kept=12), cand((0.6,), 5.5, kept=12)
    assert _best([slow, fast], 9.0) is fast
    lo, hi = cand((0.5, 0.2), 5.0, kept=12), cand((0.5, 0.3), 5.0, kept=12)
    assert _best([hi, lo], 9.0) is hi and _best([lo, hi], 9.0) is hi


def test_pareto_front():
    a, b, c = cand((0.3,), 3.0, kept=5), cand((0.4,), 4.0, kept=4), cand((0.5,), 5.0, kept=9)
    d = cand((0.45,), 3.0, kept=6)  # as fast as a, keeps more: a is dominated
    assert pareto_front([c, b, a, d]) == [d, c]
    assert pareto_front([]) == []
    same = cand((0.6,), 5.0, kept=9)  # ties c on both: one of them
    assert len(pareto_front([c, same])) == 1


def test_plans_merge_schedules_with_the_same_counts_and_skip_invalid_ones():
    meth = get_method("dynamicvit")
    # int(16 * 0.5) = int(16 * 0.53) = 8 patches: one plan, the first schedule's ratios;
    # 0.01 keeps no patch: skipped
    out = _plans(meth, SMALL, (2,), [(0.5,), (0.53,), (0.01,), (1.0,)])
    assert [c.keep_ratios for c in out.values()] == [(0.5,), (1.0,)]
    key = next(iter(out))
    assert key == ((17, 17, 9, 9), (17, 17, 9, 9), (17,))


# ---- sensitivity ------------------------------------------------------------------------------
SENS = Sensitivity(80.0, {2: ((0.4, 0.7, 1.0), (50.0, 74.0, 80.0)), 3: ((0.5, 1.0), (70.0, 80.0))})


def test_sensitivity_predicts_the_additive_model():
    # 80 - (80 - 62) - (80 - 75) at 0.55 (between 0.4 and 0.7) and 0.75
    assert SENS.predict((2, 3), (0.55, 0.75)) == pytest.approx(80 - 18 - 5)
    # past the ends: held (1.0 and above -> 80; below 0.4 -> 50)
    assert SENS.predict((2, 3), (0.2, 1.0)) == pytest.approx(50.0)
    got = SENS.predict_many((2, 3), [(1.0, 1.0), (0.4, 0.5), (0.7, 0.5)])
    assert got == pytest.approx([80.0, 40.0, 64.0])
    assert SENS.predict((3,), (0.5,)) == pytest.approx(70.0)


def test_sensitivity_extrapolates_the_first_segment_down_capped():
    # below 0.4: the 0.4..0.7 segment (slope 80 per unit) extended: 50 - 80·0.1 = 42
    got = SENS.predict_many((2, 3), [(0.3, 1.0), (0.5, 1.0), (0.3, 0.3)], extrapolate=True)
    assert got == pytest.approx([42.0, 58.0, 42.0 - 80 + 70 - 4.0])
    # a segment that rises downward is capped at the lowest point's accuracy
    up = Sensitivity(80.0, {1: ((0.5, 1.0), (60.0, 50.0))})
    assert up.predict_many((1,), [(0.2,)], extrapolate=True) == pytest.approx([60.0])
    one = Sensitivity(80.0, {1: ((0.5,), (60.0,))})  # one point: nothing to extend
    assert one.predict_many((1,), [(0.1,)], extrapolate=True) == pytest.approx([60.0])


def test_sensitivity_floors_at_zero_and_covers():
    deep = Sensitivity(30.0, {1: ((0.5, 1.0), (0.0, 30.0)), 2: ((0.5, 1.0), (0.0, 30.0))})
    assert deep.predict((1, 2), (0.5, 0.5)) == 0.0
    assert deep.predict((1, 2), (0.75, 1.0)) == pytest.approx(15.0)
    assert SENS.covers((2, 3), (0.4, 0.5)) and SENS.covers((2, 3), (0.4 - 1e-10, 0.5))
    assert not SENS.covers((2, 3), (0.39, 0.5)) and not SENS.covers((2, 3), (0.4, 0.49))
    assert SENS.outside((2, 3), ()) == ()
    assert SENS.outside((2, 3), (0.4, 0.5)) == ()
    assert SENS.outside((2, 3), (0.35, 0.45)) == (
        "stage 2 at 0.35 < 0.4 (lowest measured)",
        "stage 3 at 0.45 < 0.5 (lowest measured)",
    )
    assert SENS.outside((2, 3), (0.5, 0.4 + 0.1 - 1e-10)) == ()
    # the tolerance itself: 1e-9 under the lowest ratio still counts as measured
    edge = 0.4 - 1e-9
    assert SENS.covers((2, 3), (edge, 0.5)) and SENS.outside((2, 3), (edge, 0.5)) == ()
    with pytest.raises(ValueError):
        SENS.covers((2, 3), (0.5,))
    with pytest.raises(ValueError):
        SENS.outside((2, 3), (0.5,))


# ---- the margin ------------------------------------------------------------------------------
def test_resolve_margin():
    noisy = table(extra={"noise": {"median_spread": 0.04}})
    assert resolve_margin(None, noisy) == (0.04, "auto: the table's measured error (noise 4.0%)")
    assert resolve_margin(" AUTO ", noisy)[0] == 0.04
    assert resolve_margin("auto", table()) == (
        0.0, "auto: the table records no measured error (profiled before 0.2)",
    )  # fmt: skip
    m, why = resolve_margin("3%", noisy)
    assert m == pytest.approx(0.03)
    assert why == "given: --margin 3%; the table's measured error is 4.0% (noise 4.0%)"
    assert resolve_margin("0.05", table()) == (0.05, "given: --margin 0.05")
    assert resolve_margin("0", table())[0] == 0.0 and resolve_margin("0.5", table())[0] == 0.5
    at_limit = table(extra={"noise": {"median_spread": 0.10}})
    assert resolve_margin("auto", at_limit)[0] == 0.10
    too_noisy = table(extra={"noise": {"median_spread": 0.12}})
    with pytest.raises(EdgepruneError) as e:
        resolve_margin("auto", too_noisy)
    assert e.value.message == (
        "the table's measured error is 12% (noise 12.0%), above the 10% an automatic "
        "margin can absorb"
    )
    assert e.value.hint == "measure a better table (a quieter machine, more runs) or give --margin"
    with pytest.raises(
        EdgepruneError, match="^--margin 'lots' is not auto, a percentage or a"
    ) as e:
        resolve_margin("lots", table())
    assert e.value.hint == "e.g. --margin 3%"
    two = table(extra={"noise": {"median_spread": 0.04},
                       "interp_check": {"points": [{"rel_err": 0.03}]}})  # fmt: skip
    assert resolve_margin(None, two)[1] == (
        "auto: the table's measured error (interpolation 3.0%, noise 4.0%)"
    )
    for bad in ("51%", "0.51", "-0.01", "nan", "inf"):
        with pytest.raises(EdgepruneError, match=f"^--margin '{bad}' must lie in 0..50%$"):
            resolve_margin(bad, table())


# ---- the search ---------------------------------------------------------------------------
def test_search_arguments_are_checked():
    m = LatencyModel(table())
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(EdgepruneError, match="is not a positive finite number"):
            search(m, bad)
    with pytest.raises(EdgepruneError, match=r"^--margin 60.0% must lie in 0..50%$"):
        search(m, 5.0, margin=0.6)
    with pytest.raises(EdgepruneError, match=r"^--margin -1.0% must lie"):
        search(m, 5.0, margin=-0.01)
    search(m, 100.0, locs=(2,), margin=0.5)  # the limit itself is allowed
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(EdgepruneError, match="re-anchoring scale"):
            search(m, 5.0, scale=bad)
    with pytest.raises(EdgepruneError) as e:
        check_schedule("greedy")
    assert (e.value.message, e.value.hint) == (
        "unknown --schedule 'greedy'", "expected: geometric, free",
    )  # fmt: skip
    check_schedule("free")


def test_method_at():
    meth, locs = _method_at("evit", [1, 2], SMALL)
    assert meth.name == "evit" and locs == (1, 2)
    with pytest.raises(EdgepruneError, match="^pruning location 6 is outside the model$"):
        _method_at("dynamicvit", None, SMALL)  # the default 3, 6, 9 at depth 4
    assert _method_at("dynamicvit", None, TINY)[1] == (3, 6, 9)
    with pytest.raises(EdgepruneError, match="^the dense model has no keep ratios to budget$") as e:
        _method_at("dense", None, SMALL)
    assert e.value.hint == "pass --method"
    with pytest.raises(EdgepruneError, match="outside the model"):
        _method_at("dynamicvit", (2, 5), SMALL)


def test_one_stage_search_by_hand():
    m = LatencyModel(table())
    # one_stage_ms(k) = 4.77 + 0.2k: k = 10 -> 6.77, k = 11 -> 6.97
    r = search(m, 6.8, "dynamicvit", "geometric", locs=(2,))
    assert r.status == "ok" and r.chosen.plan.attn_tokens == (17, 17, 11, 11)
    assert r.chosen.predicted_ms == pytest.approx(one_stage_ms(10))
    assert r.chosen.kept_tokens == 17 + 17 + 11 + 11
    assert r.dense_ms == pytest.approx(1.0 + 0.1 * 4 * 17)
    assert r.fastest.plan.attn_tokens == (17, 17, 2, 2)
    assert (r.method, r.arch, r.locs, r.schedule, r.target_ms) == (
        "dynamicvit", SMALL, (2,), "geometric", 6.8,
    )  # fmt: skip
    assert r.objective == "kept_tokens" and r.margin == 0.0 and r.scale == 1.0
    assert r.extrapolated == () and r.margin_source == "none"
    # one candidate per distinct count: int(16 r) for r on the 0.001 grid (1..16 patches)
    assert sorted(c.plan.attn_tokens[-1] for c in r.candidates) == list(range(2, 18))
    f = search(m, 6.8, "dynamicvit", "free", locs=(2,))
    assert f.chosen.plan.attn_tokens == (17, 17, 11, 11) and f.schedule == "free"


def test_margin_and_scale_move_the_aim():
    m = LatencyModel(table())
    # aim = 7.4 × (1 - 0.1) / 1 = 6.66 -> k = 9 (6.57); k = 10 (6.77) misses
    r = search(m, 7.4, "dynamicvit", locs=(2,), margin=0.1, margin_source="given")
    assert r.chosen.plan.attn_tokens[-1] == 10 and r.margin_source == "given"
    assert r.aim_ms == pytest.approx(6.66)
    # scale 1.1: aim 7.4 / 1.1 = 6.727 in the table's terms -> k = 9
    s = search(m, 7.4, "dynamicvit", locs=(2,), scale=1.1)
    assert s.chosen.plan.attn_tokens[-1] == 10
    assert s.predicted_ms == pytest.approx(1.1 * one_stage_ms(9))
    assert s.margin_ms == pytest.approx(7.4 - 1.1 * one_stage_ms(9))
    # the same target without either: k = 13 (7.37)
    assert search(m, 7.4, "dynamicvit", locs=(2,)).chosen.plan.attn_tokens[-1] == 14


def test_dense_when_the_dense_model_meets_the_aim():
    m = LatencyModel(table())
    r = search(m, 7.81, "dynamicvit", locs=(2,))  # dense 7.8 ms
    assert r.status == "dense" and r.chosen.keep_ratios == ()
    assert r.chosen.predicted_ms == r.dense_ms == pytest.approx(7.8)
    assert r.chosen.kept_tokens == 68.0 and r.chosen.plan.attn_tokens == (17,) * 4
    assert search(m, 7.79, "dynamicvit", locs=(2,)).status == "ok"
    with_sens = search(m, 9.0, "dynamicvit", locs=(2,), sensitivity=Sensitivity(
        77.0, {2: ((0.1, 1.0), (10.0, 77.0))}))  # fmt: skip
    assert with_sens.chosen.accuracy == 77.0 and with_sens.objective == "predicted accuracy"
    d = _dense(SMALL, 3.0, None)
    assert (d.keep_ratios, d.predicted_ms, d.kept_tokens, d.accuracy) == ((), 3.0, 68.0, None)


def test_unreachable_target_says_how_far():
    m = LatencyModel(table())
    with pytest.raises(UnreachableTarget) as e:
        search(m, 4.0, "dynamicvit", locs=(2,))
    fast = one_stage_ms(1)
    assert e.value.message == (
        f"target 4.000 ms is unreachable on this profile: the fastest dynamicvit schedule "
        f"([0.063] at [2]) predicts {fast:.3f} ms (dense 7.800 ms)"
    )
    assert e.value.hint == f"ask for at least {fast:.3f} ms, or prune at more locations"
    # one patch: every SPViT schedule either keeps none or drops none
    one = Arch("one", embed_dim=32, num_heads=2, depth=4, img_size=16, num_classes=10)
    with pytest.raises(
        EdgepruneError, match=r"^no valid keep schedule of spvit at locations \[2\]$"
    ):
        search(LatencyModel(table(one)), 5.0, "spvit", locs=(2,))


def test_sensitivity_search_keeps_to_the_measured_ratios_unless_extrapolating():
    m = LatencyModel(table())
    sens = Sensitivity(80.0, {2: ((0.5, 1.0), (60.0, 80.0))})
    r = search(m, 6.0, "dynamicvit", "free", locs=(2,), sensitivity=sens, extrapolate=True)
    assert r.chosen.plan.attn_tokens[-1] <= 7 and r.extrapolated  # below 8 patches
    assert r.extrapolated[0].startswith("stage 2 at ")
    with pytest.raises(UnreachableTarget, match=r"within the sensitivity file's measured keep"):
        search(m, 6.0, "dynamicvit", "free", locs=(2,), sensitivity=sens)
    ok = search(m, 6.7, "dynamicvit", "free", locs=(2,), sensitivity=sens)
    assert ok.chosen.keep_ratios[0] >= 0.5 and ok.extrapolated == ()
    with pytest.raises(EdgepruneError, match="no curve for pruning location"):
        search(m, 6.7, "dynamicvit", locs=(1,), sensitivity=sens)


def test_space_allowed_and_within():
    m = LatencyModel(table())
    meth = get_method("dynamicvit")
    sens = Sensitivity(80.0, {2: ((0.5, 1.0), (60.0, 80.0))})
    sets = [(0.25,), (0.5,), (0.75,)]
    assert _Space(m, meth, (2,), None).allowed(sets) == sets
    assert _Space(m, meth, (2,), sens).allowed(sets) == [(0.5,), (0.75,)]
    assert _Space(m, meth, (2,), sens, extrapolate=True).allowed(sets) == sets
    assert _Space(m, meth, (2,), None).within() == ""
    assert _Space(m, meth, (2,), sens, extrapolate=True).within() == ""
    assert _Space(m, meth, (2,), sens).within() == "stage 2 ≥ 0.5"
    ev = _Space(m, meth, (2,), sens).evaluated([(0.5,), (0.75,)])
    c = next(iter(ev.values()))
    assert c.predicted_ms == pytest.approx(one_stage_ms(8)) and c.kept_tokens == 52.0
    assert c.accuracy == pytest.approx(60.0)


def test_free_search_refines_around_the_best_point():
    """Two stages on DeiT-T: the 0.02 grid, then quarter steps (0.005) around the best;
    the refined point keeps more tokens than any point of the coarse grid."""
    m = LatencyModel(table(TINY))
    meth = get_method("dynamicvit")
    space = _Space(m, meth, (4, 8), None)
    aim = 1.0 + 0.1 * (4 * 197 + 4 * 120 + 4 * 60) + 0.01 * (197 + 120) + 0.05
    cands = space.free(aim)
    coarse = {(c.plan.attn_tokens, c.plan.mlp_tokens) for c in space.evaluated(
        [(a, b) for a in _grid(0.02) for b in _grid(0.02) if b <= a]).values()}  # fmt: skip
    fine = [c for c in cands if (c.plan.attn_tokens, c.plan.mlp_tokens) not in coarse]
    assert fine, "the refinement added no schedule"
    assert all(b <= a for a, b in (c.keep_ratios for c in cands))
    best = _best(cands, aim)
    best_coarse = _best([c for c in cands if c not in fine], aim)
    assert best.kept_tokens > best_coarse.kept_tokens
    steps = {round(r / 0.005) * 0.005 - r for c in fine for r in c.keep_ratios}
    assert max(abs(s) for s in steps) < 1e-9  # on the quarter-step grid
    keys = [(c.plan.attn_tokens, c.plan.mlp_tokens) for c in cands]
    assert len(set(keys)) == len(keys)  # a plan is weighed once
    assert any(c.keep_ratios[0] < best_coarse.keep_ratios[0] for c in fine)  # both sides
    assert any(c.keep_ratios[0] > best_coarse.keep_ratios[0] for c in fine)
    assert all(abs(r - q) <= 4 * 0.005 + 1e-9 for c in fine
               for r, q in zip(c.keep_ratios, best_coarse.keep_ratios, strict=True))  # fmt: skip


def test_budget_result_properties():
    r = search(LatencyModel(table()), 6.8, "dynamicvit", locs=(2,), margin=0.25, scale=0.8)
    assert isinstance(r, BudgetResult)
    assert r.aim_ms == pytest.approx(6.8 * 0.75)
    assert r.predicted_ms == pytest.approx(0.8 * r.chosen.predicted_ms)
    assert r.front == pareto_front(r.candidates)


def test_corrected_table_predictions_meet_the_target():
    m = LatencyModel(table(e2e=EndToEnd((), 0.5, 2.0)))
    r = search(m, 2 * one_stage_ms(10) + 0.5 + 1e-9, "dynamicvit", locs=(2,))
    assert r.chosen.plan.attn_tokens[-1] == 11


def test_geometric_schedules_of_a_per_stage_method():
    """EViT's rates are relative to each stage's input: the geometric schedule is
    (r, r), r from 0.001 up (0 would keep no token)."""
    m = LatencyModel(table(method=None))  # a table with both methods' selectors
    r = search(m, 7.7, "evit", "geometric", locs=(1, 2))
    assert all(a == b for a, b in (c.keep_ratios for c in r.candidates))
    assert min(c.keep_ratios[0] for c in r.candidates) == 0.001
    assert max(c.keep_ratios[0] for c in r.candidates) <= 0.999


def test_sensitivity_predictions_in_float64():
    s = Sensitivity(80.0, {1: ((0.1, 0.7), (70.1234567, 79.0))})
    # a third of the way from 70.1234567 to 79: float32 would be off by ~1e-6
    want = 70.1234567 + (79.0 - 70.1234567) / 3
    assert s.predict((1,), (0.3,)) == pytest.approx(want, abs=1e-9)


def test_a_non_finite_prediction_says_what_to_check():
    s = Sensitivity(72.0, {3: ((0.5, 1.0), (math.inf, 60.0))})
    with pytest.raises(EdgepruneError) as e:
        s.predict((3,), (0.7,))
    assert e.value.message == "the sensitivity curves predict a non-finite accuracy"
    assert e.value.hint == "check the sensitivity file: its accuracies must be finite numbers"


def test_search_names_the_sensitivity_file_and_meets_an_aim_equal_to_dense():
    m = LatencyModel(table())
    sens = Sensitivity(80.0, {2: ((0.5, 1.0), (60.0, 80.0))})
    with pytest.raises(EdgepruneError, match="^sensitivity file <sensitivity> has no curve"):
        search(m, 6.7, "dynamicvit", locs=(1,), sensitivity=sens)
    with pytest.raises(EdgepruneError, match="^sensitivity file s.json has no curve"):
        search(m, 6.7, "dynamicvit", locs=(1,), sensitivity=sens, sensitivity_path="s.json")
    dense = search(m, 100.0, "dynamicvit", locs=(2,)).dense_ms
    assert search(m, dense, "dynamicvit", locs=(2,)).status == "dense"  # ≤ the aim


@pytest.mark.parametrize(
    "method,locs,step",
    [
        ("dynamicvit", (2, 4, 6, 8), 0.05),  # C(53, 4) > 25 000 at 0.02: 0.05
        ("evit", (2, 4, 6), 0.05),  # 50³ and 40³ > 25 000: 0.05
        ("evit", (2, 4, 6, 8), 0.1),  # 20⁴ > 25 000: 0.1
        ("evit", (1, 2, 4, 6, 8), 0.2),  # 10⁵ and 8⁵ > 25 000: 0.2
    ],
)
def test_free_grid_is_the_finest_within_the_candidate_limit(method, locs, step):
    """Unreachable aim (nothing to refine around): the candidates are the grid itself."""
    m = LatencyModel(table(TINY, method=None))
    cands = _Space(m, get_method(method), locs, None).free(0.0)
    ratios = {r for c in cands for r in c.keep_ratios}
    assert ratios <= set(_grid(step)) and min(ratios) == step
    assert len(ratios) > len(_grid(step)) // 2


def test_five_stages_are_not_refined():
    """9⁵ schedules around the best point would pass the candidate limit: no refinement."""
    m = LatencyModel(table(TINY, method=None))
    space = _Space(m, get_method("dynamicvit"), (2, 4, 6, 8, 10), None)
    cands = space.free(1e9)  # every schedule meets it: a best point exists
    assert {r for c in cands for r in c.keep_ratios} <= set(_grid(0.1))


def test_unreachable_with_a_margin_says_so():
    m = LatencyModel(table())
    with pytest.raises(
        UnreachableTarget, match=r"^target 5.000 ms less the 10.0% margin \(4.500 ms\)"
    ):
        search(m, 5.0, "dynamicvit", locs=(2,), margin=0.1)


@pytest.mark.parametrize("schedule", ["geometric", "free"])
def test_extrapolated_accuracy_is_the_first_segment_extended(schedule):
    m = LatencyModel(table())
    sens = Sensitivity(80.0, {2: ((0.5, 1.0), (60.0, 80.0))})
    r = search(m, 6.0, "dynamicvit", schedule, locs=(2,), sensitivity=sens, extrapolate=True)
    r0 = r.chosen.keep_ratios[0]
    assert r0 < 0.5 and r.chosen.accuracy == pytest.approx(60.0 - 40.0 * (0.5 - r0))
    assert all(c.accuracy == pytest.approx(60.0 - 40.0 * (0.5 - c.keep_ratios[0]))
               for c in r.candidates if c.keep_ratios[0] < 0.5)  # fmt: skip


def test_refinement_never_weighs_a_keep_rate_of_zero():
    """EViT at block 2 of DeiT-T, aimed at the grid's lowest rate (0.02, 4 of 196 patches):
    the quarter steps below it stop at 0.005. A rate of 0 is outside (0, 1]; EViT would
    take it as keeping no patch token, a plan no valid rate gives."""
    m = LatencyModel(table(TINY, method=None))
    space = _Space(m, get_method("evit"), (2,), None)
    aim = next(iter(space.evaluated([(0.02,)]).values())).predicted_ms
    cands = space.free(aim)
    assert all(0 < r <= 1 for c in cands for r in c.keep_ratios)
    # tokens after block 2: CLS + fused + ceil(196 r) patches, by hand
    low = {c.keep_ratios: c.plan.mlp_tokens[2] for c in cands if c.keep_ratios[0] < 0.02}
    assert low == {(0.005,): 3, (0.01,): 4, (0.015,): 5}  # 0.98, 1.96, 2.94 patches
    assert min(c.plan.mlp_tokens[2] for c in cands) == 3


def test_refinement_weighs_equal_neighbouring_ratios_of_a_cumulative_method():
    """DynamicViT at blocks 4 and 8 of DeiT-T, aimed at (0.5, 0.5) (98 patches twice; no
    grid point keeps more within it): the quarter steps around it, non-increasing, include
    the pairs of equal ratios. Patches kept (int(196 r)) for 0.48, 0.485 … 0.52: 94, 95,
    96, 97, 98, 98, 99, 100, 101; every non-increasing pair of them is weighed."""
    m = LatencyModel(table(TINY))
    space = _Space(m, get_method("dynamicvit"), (4, 8), None)
    aim = 1.0 + 0.1 * (4 * 197 + 4 * 99 + 4 * 99) + 0.01 * (197 + 99) + 1e-9
    cands = space.free(aim)
    assert _best(cands, aim).keep_ratios == (0.5, 0.5)
    near = {
        (c.plan.attn_tokens[4] - 1, c.plan.attn_tokens[8] - 1)
        for c in cands
        if 94 <= c.plan.attn_tokens[8] - 1 <= c.plan.attn_tokens[4] - 1 <= 101
    }
    assert near == {(a, b) for a in range(94, 102) for b in range(94, a + 1)}  # 36 pairs


def test_refined_candidates_are_extrapolated_like_the_grid():
    """DeiT-T at block 2 (196 patches, so the quarter steps give new plans) with a curve
    measured from 0.5 up: every candidate, refined or not, reads the line 40 + 40 r,
    extended below 0.5. Keeping k patches costs 43.37 + k ms: within 100 ms k = 56, which
    r = 0.29 keeps (off the 0.02 grid)."""
    m = LatencyModel(table(TINY))
    sens = Sensitivity(80.0, {2: ((0.5, 1.0), (60.0, 80.0))})
    r = search(m, 100.0, "dynamicvit", "free", locs=(2,), sensitivity=sens, extrapolate=True)
    assert r.chosen.keep_ratios == (0.29,) and r.chosen.plan.attn_tokens[-1] == 57
    assert r.chosen.predicted_ms == pytest.approx(43.37 + 56)
    assert r.chosen.accuracy == pytest.approx(40.0 + 40.0 * 0.29)
    assert all(c.accuracy == pytest.approx(40.0 + 40.0 * c.keep_ratios[0]) for c in r.candidates)


@pytest.mark.parametrize("n", [7, 8])
def test_free_grid_of_a_per_stage_method_at_many_locations(n):
    """EViT at 7 locations: 5⁷ = 78 125 > 25 000 ≥ 4⁷ = 16 384 schedules, steps of 0.25;
    at 8, 4⁸ = 65 536 > 25 000 ≥ 2⁸, steps of 0.5. EViT refuses the rate 1.0 (it would
    keep every token): at 8 locations one schedule is left."""
    m = LatencyModel(table(TINY, method=None))
    cands = _Space(m, get_method("evit"), tuple(range(1, n + 1)), None).free(0.0)
    if n == 7:
        assert {r for c in cands for r in c.keep_ratios} == {0.25, 0.5, 0.75}
    else:
        assert [c.keep_ratios for c in cands] == [(0.5,) * 8]
