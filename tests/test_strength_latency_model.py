"""The latency model's corrections, errors and records, against numbers worked out by
hand (benchmarks/mutation.py's ``latency_model`` module: what the prediction tests do not
reach).

The table here is linear where it matters: block(n) = 0.01·n ms on knots 1..201, so a
dense DeiT-T (12 blocks at 197) is 12 × 1.97 = 23.64 ms of blocks, + 0.3 embed + 0.06
head = 24.0 ms of pieces.
"""

from __future__ import annotations

import math

import pytest
import torch

from edgeprune.core.arch import get_arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.plan import SelectorStage, TokenPlan, dense_plan
from edgeprune.core.source import resolve
from edgeprune.latency.model import (
    Expected,
    LatencyModel,
    expected_from_measurement,
    expected_from_table,
    fit_correction,
    fit_end_to_end,
    measured_error,
    table_error,
)
from edgeprune.latency.table import Curve, EndToEnd, LatencyTable, Point, piecewise_linear

TINY = get_arch("deit_tiny")


def line(k: float, grid=(1, 101, 201)) -> Curve:
    return Curve(grid, tuple(k * n for n in grid), tuple(1.5 * k * n for n in grid))


def table(**kw) -> LatencyTable:
    base = dict(
        device={"name": "hand", "runtime": "none", "threads": 1},
        arch=TINY,
        method="dynamicvit",
        batch=2,
        date="by hand",
        measured=False,
        block=line(0.01),
        embed=Point(0.3, 0.4),
        head=Point(0.06, 0.07),
        selectors={"dynamicvit": line(0.001)},
    )
    return LatencyTable(**{**base, **kw})


# ---- fit_correction ----------------------------------------------------------------------
def test_affine_fit_through_spread_anchors():
    a, b = fit_correction([1.0, 2.0, 4.0], [2.0, 3.5, 6.5])  # 0.5 + 1.5x
    assert a == pytest.approx(0.5, abs=1e-12) and b == pytest.approx(1.5, abs=1e-12)


def test_anchors_spanning_exactly_a_fifth_still_fit_both_terms():
    # (10 - 8) = 0.2 × 10: at the limit, both terms; measured = 1 + x
    a, b = fit_correction([8.0, 10.0], [9.0, 11.0])
    assert a == pytest.approx(1.0, abs=1e-9) and b == pytest.approx(1.0, abs=1e-9)


def test_close_anchors_fit_a_scale_through_zero():
    # 1 < 0.2 × 11: too close for an offset; scale = Σxy / Σx² = (200 + 253) / 221
    assert fit_correction([10.0, 11.0], [20.0, 23.0]) == (0.0, pytest.approx(453 / 221))
    assert fit_correction([4.0], [6.0]) == (0.0, 1.5)  # one anchor: a scale
    # a plausible line (1 + 1.9x) through close anchors is still not fitted
    assert fit_correction([10.0, 11.0], [20.0, 21.9]) == (0.0, pytest.approx(440.9 / 221))


@pytest.mark.parametrize(
    "measured,plausible",
    [
        ([1.09, 2.08, 4.06], True),  # 0.1 + 0.99x
        ([2.09, 4.08, 8.06], True),  # 0.1 + 1.99x
        ([2.11, 4.12, 8.14], False),  # scale 2.01 > 2
        ([0.61, 1.12, 2.14], True),  # 0.1 + 0.51x
        ([0.59, 1.08, 2.06], False),  # scale 0.49 < 0.5
        ([0.9, 1.9, 3.9], True),  # offset -0.1, within half of the smallest anchor
        ([6.0, 7.0, 9.0], False),  # offset 5 > 0.5 × 6
        ([-1.5, -0.5, 1.5], False),  # offset -2.5: |a| counts
    ],
)
def test_implausible_affine_fits_fall_back_to_a_scale(measured, plausible):
    raw = [1.0, 2.0, 4.0]
    a, b = fit_correction(raw, measured)
    if plausible:
        assert a != 0.0 and 0.5 <= b <= 2.0
        assert a + b * 3.0 == pytest.approx(measured[0] + (measured[1] - measured[0]) * 2, 1e-6)
    else:
        xy = sum(x * y for x, y in zip(raw, measured, strict=True))
        assert (a, b) == (0.0, pytest.approx(xy / 21.0, rel=1e-12))


@pytest.mark.parametrize(
    "raw,measured", [([], []), ([1.0, 2.0], [1.0]), ([1.0, 0.0], [1.0, 1.0]), ([-1.0], [1.0])]
)
def test_fit_correction_refuses_bad_anchors(raw, measured):
    with pytest.raises(ValueError, match="^anchors need positive predicted latencies$"):
        fit_correction(raw, measured)


def test_fit_end_to_end_records_each_anchor():
    tb = table()
    dense = dense_plan(TINY)  # 24.0 ms of pieces
    half = TokenPlan(TINY, "dense", (), (), (99,) * 12, (99,) * 12)  # 0.36 + 11.88
    fit = fit_end_to_end(tb, [("dense", dense, 30.5, 31.0), ("half", half, 15.8, 17.0)])
    # measured = 0.5 + 1.25 × pieces at both anchors
    assert fit.offset_ms == pytest.approx(0.5) and fit.scale == pytest.approx(1.25)
    assert [a.label for a in fit.anchors] == ["dense", "half"]
    assert fit.anchors[1].attn_tokens == (99,) * 12 and fit.anchors[1].mlp_tokens == (99,) * 12
    assert fit.anchors[0].selector_tokens_in == () and fit.anchors[1].p90_ms == 17.0
    assert fit.anchors[0].median_ms == 30.5
    rows = tb.extra["e2e_fit"]
    assert [r["label"] for r in rows] == ["dense", "half"]
    assert rows[0]["pieces_ms"] == pytest.approx(24.0) and rows[1]["pieces_ms"] == pytest.approx(
        12.24
    )
    assert [r["measured_ms"] for r in rows] == [30.5, 15.8]
    assert rows[0]["corrected_ms"] == pytest.approx(30.5) and rows[1]["corrected_ms"] == (
        pytest.approx(15.8)
    )


def test_fit_end_to_end_fits_the_raw_pieces_of_a_corrected_table():
    tb = table(e2e=EndToEnd((), 7.0, 3.0))  # an old correction must not leak into the fit
    sel = TokenPlan(TINY, "dynamicvit", (3,), (0.5,), (197,) * 3 + (99,) * 9, (197,) * 3 +
                    (99,) * 9, (SelectorStage(3, "pre", 197, 99),))  # fmt: skip
    raw = 0.36 + 0.01 * (3 * 197 + 9 * 99) + 0.001 * 197
    fit = fit_end_to_end(tb, [("a", sel, 2 * raw, 2 * raw)])
    assert fit.offset_ms == 0.0 and fit.scale == pytest.approx(2.0)
    assert fit.anchors[0].selector_tokens_in == (197,)
    assert tb.extra["e2e_fit"][0]["pieces_ms"] == pytest.approx(raw)


# ---- the model's corrections and checks -------------------------------------------------
def test_corrected_and_uncorrected_predictions():
    tb = table(e2e=EndToEnd((), 0.5, 1.25))
    m = LatencyModel(tb, "t.json")
    assert (m.offset_ms, m.scale) == (0.5, 1.25)
    p = m.predict(dense_plan(TINY))
    assert p.total_ms == pytest.approx(0.5 + 1.25 * 24.0)
    assert p.embed_ms == pytest.approx(1.25 * 0.3) and p.head_ms == pytest.approx(1.25 * 0.06)
    assert p.blocks_ms == pytest.approx((1.25 * 1.97,) * 12)
    assert (p.overhead_ms, p.scale) == (0.5, 1.25)
    raw = m.uncorrected()
    assert (raw.offset_ms, raw.scale, raw.source, raw.table) == (0.0, 1.0, "t.json", tb)
    assert raw.predict(dense_plan(TINY)).total_ms == pytest.approx(24.0)
    plain = LatencyModel(table())
    assert (plain.offset_ms, plain.scale, plain.source) == (0.0, 1.0, "<table>")
    assert LatencyModel(tb, corrected=False).scale == 1.0


def test_prediction_record():
    p = LatencyModel(table()).predict(resolve("deit_tiny:dynamicvit@0.5").plan)
    d = p.to_dict()
    assert list(d) == [
        "predicted_ms", "overhead_ms", "e2e_scale", "embed_ms", "head_ms", "blocks_ms",
        "selectors_ms", "tokens_per_block", "mlp_tokens_per_block", "selector_tokens_in",
    ]  # fmt: skip
    assert d["predicted_ms"] == p.total_ms and d["e2e_scale"] == 1.0
    assert d["tokens_per_block"] == [197] * 3 + [99] * 3 + [50] * 3 + [25] * 3
    assert d["mlp_tokens_per_block"] == d["tokens_per_block"]
    assert d["selector_tokens_in"] == [197, 99, 50]
    assert d["selectors_ms"] == pytest.approx([0.197, 0.099, 0.05])
    assert p.total_ms == pytest.approx(0.36 + 0.01 * (3 * 197 + 3 * 99 + 3 * 50 + 3 * 25) + 0.346)


def test_batch_and_arch_checks_say_what_to_do():
    m = LatencyModel(table(), "t.json")
    m.check_batch(2)
    with pytest.raises(EdgepruneError, match="^profile t.json was measured at batch 2, but "
                       "batch 1 was asked for$") as e:  # fmt: skip
        m.check_batch(1)
    assert e.value.hint == "pass --batch 2 or re-profile at batch 1"
    with pytest.raises(EdgepruneError, match="^profile t.json is for deit_tiny, but the model "
                       "is deit_small$") as e:  # fmt: skip
        m.check_arch(get_arch("deit_small"))
    assert e.value.hint == "use a profile measured for deit_small"
    m.check_arch(get_arch("deit_tiny"))


def test_selector_curve_messages():
    m = LatencyModel(table(method=None, selectors={"evit": line(0.001)}), "t.json")
    assert m.selector_curve("dynamicvit", 0) is None
    assert m.selector_curve("evit", 3) is m.table.selectors["evit"]
    with pytest.raises(EdgepruneError) as e:
        m.selector_curve("dynamicvit", 3)
    assert e.value.message == (
        "profile t.json has no selector timings for method dynamicvit (it has: evit)"
    )
    assert e.value.hint == "re-profile with --method dynamicvit"
    two = LatencyModel(table(method=None, selectors={"evit": line(1), "tome": line(1)}), "t")
    with pytest.raises(EdgepruneError, match=r"\(it has: evit, tome\)$"):
        two.selector_curve("spvit", 1)
    bare = LatencyModel(table(method=None, selectors={}), "t.json")
    with pytest.raises(EdgepruneError, match=r"\(it has: none\)$"):
        bare.selector_curve("evit", 1)
    with pytest.raises(EdgepruneError) as e:
        LatencyModel(table(), "t.json").selector_curve("evit", 1)
    assert (
        e.value.message
        == "profile t.json was measured for method dynamicvit, but the model is evit"
    )
    assert e.value.hint == "use a profile measured with --method evit"


def test_split_plan_without_halves_is_refused_with_a_hint():
    plan = resolve("deit_tiny:evit@0.7").plan
    with pytest.raises(EdgepruneError) as e:
        LatencyModel(table(method="evit", selectors={"evit": line(0.001)}), "t.json").predict(plan)
    assert e.value.message == (
        "profile t.json has no separate attention/MLP timings, which a plan with mid-block "
        "selectors needs"
    )
    assert e.value.hint == "re-profile with a profiler that measures the attn and mlp halves"
    # with only one half measured it is refused too
    half = table(method="evit", selectors={"evit": line(0.001)}, attn=line(0.004))
    with pytest.raises(EdgepruneError, match="attention/MLP"):
        LatencyModel(half).predict(plan)


def test_predict_tokens_shapes_and_defaults():
    m = LatencyModel(table())
    attn = torch.full((2, 12), 99.0, dtype=torch.float64)
    out = m.predict_tokens(attn)
    assert out.shape == (2,) and out.tolist() == pytest.approx([0.36 + 12 * 0.99] * 2)
    with pytest.raises(ValueError, match="^token counts need 12 blocks on the last axis$"):
        m.predict_tokens(torch.ones(1, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="12 blocks"):
        m.predict_tokens(attn, torch.ones(2, 11, dtype=torch.float64))
    half = m.predict_tokens(attn.float())  # the dtype follows the counts
    assert half.dtype == torch.float32


def test_predict_tokens_takes_any_leading_shape():
    m = LatencyModel(table())
    attn = torch.full((2, 3, 12), 99.0, dtype=torch.float64)
    out = m.predict_tokens(attn)
    assert out.shape == (2, 3) and out.flatten().tolist() == pytest.approx([12.24] * 6)
    sel = torch.full((2, 3, 1), 50.0, dtype=torch.float64)
    assert m.predict_tokens(attn, attn, sel, "dynamicvit").flatten().tolist() == (
        pytest.approx([12.29] * 6)
    )


def test_selectors_need_a_method_matching_the_table():
    m = LatencyModel(table(), "t.json")
    attn = torch.full((1, 12), 99.0, dtype=torch.float64)
    with pytest.raises(EdgepruneError) as e:
        m.predict_tokens(attn, attn, torch.ones(1, 1, dtype=torch.float64))
    assert e.value.message == "profile t.json was measured for method dynamicvit, but the model is "


def test_predict_many():
    m = LatencyModel(table())
    assert m.predict_many([]).shape == (0,) and m.predict_many([]).dtype == torch.float64
    plans = [resolve(f"deit_tiny:dynamicvit@{r}").plan for r in (0.5, 0.7)]
    many = m.predict_many(plans).tolist()
    assert many == pytest.approx([m.predict(p).total_ms for p in plans], rel=1e-12)
    with pytest.raises(ValueError, match="^plans with different numbers of selectors$"):
        LatencyModel.plan_tensors([plans[0], dense_plan(TINY)])
    with pytest.raises(EdgepruneError, match="is for deit_tiny"):
        m.predict_many([resolve("deit_small:dynamicvit@0.5").plan])
    # a mid-block plan: the MLP halves see other counts than attention
    split = LatencyModel(table(method="evit", selectors={"evit": line(0.001)}, attn=line(0.004),
                               mlp=line(0.006)))  # fmt: skip
    evit = resolve("deit_tiny:evit@0.7").plan
    assert float(split.predict_many([evit])[0]) == pytest.approx(
        split.predict(evit).total_ms, rel=1e-12
    )
    want = 0.36 + 0.01 * (3 * 197 + 2 * 140 + 2 * 100 + 2 * 72) + 0.001 * (197 + 140 + 100)
    want += 0.004 * (197 + 140 + 100) + 0.006 * (140 + 100 + 72)
    assert split.predict(evit).total_ms == pytest.approx(want, rel=1e-12)


# ---- interpolation ------------------------------------------------------------------------
def test_piecewise_linear_without_extrapolation_holds_the_ends():
    x = torch.tensor([0.0, 1.0, 2.5, 4.0, 9.0], dtype=torch.float64)
    got = piecewise_linear((1, 2, 4), (10.0, 20.0, 0.0), x, extrapolate=False)
    assert got.tolist() == [10.0, 10.0, 15.0, 0.0, 0.0]
    got = piecewise_linear((1, 2, 4), (10.0, 20.0, 0.0), x)
    assert got.tolist() == [0.0, 10.0, 15.0, 0.0, -50.0]
    one = piecewise_linear((5,), (3.0,), x)
    assert one.tolist() == [3.0] * 5
    assert Curve((5,), (3.0,), (3.0,)).at(100) == 3.0


def test_piecewise_linear_keeps_fractional_knots_exact():
    """Keep ratios are knots too (sensitivity curves): read in the counts' precision."""
    x = torch.tensor([0.1, 0.2, 0.25], dtype=torch.float64)
    got = piecewise_linear((0.1, 0.3), (1.0, 3.0), x).tolist()
    assert got == pytest.approx([1.0, 2.0, 2.5], abs=1e-12)


def test_gradient_at_an_inner_knot_is_the_slope_to_its_right():
    n = torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    piecewise_linear((1, 2, 4), (10.0, 20.0, 0.0), n).sum().backward()
    # at 2: the 2..4 segment (-10 per token); at 1: 1..2 (+10); at 4, the last: 2..4
    assert n.grad.tolist() == [-10.0, 10.0, -10.0]


def test_interp_and_at_clamp_at_zero_only_below():
    c = Curve((1, 2), (1.0, 3.0), (1.0, 3.0))
    assert c.at(0.25) == 0.0  # -0.5 clamped
    assert c.at(0.75) == pytest.approx(0.5)
    assert c.at(3) == 5.0
    assert isinstance(c.at(2), float)


# ---- the error a table states -----------------------------------------------------------
def test_measured_error_parts():
    tb = table(extra={
        "e2e_fit": [
            {"corrected_ms": 11.0, "measured_ms": 10.0},  # +10 %
            {"corrected_ms": 9.8, "measured_ms": 10.0},  # -2 %
            {"corrected_ms": 5.0, "measured_ms": 0.0},  # no measurement: left out
            {"corrected_ms": 0.5, "measured_ms": 0.5},  # under 1 ms: counts (0 %)
        ],
        "interp_check": {"points": [{"rel_err": e} for e in (0.05, 0.01, 0.03, 0.02)]},
        "noise": {"median_spread": 0.04},
    })  # fmt: skip
    err, parts = measured_error(tb)
    assert parts["e2e_residual"] == pytest.approx(math.sqrt((0.01 + 0.0004) / 3))
    assert parts["interpolation"] == 0.03  # sorted (0.01, 0.02, 0.03, 0.05)[2]
    assert parts["noise"] == 0.04
    assert list(parts) == ["e2e_residual", "interpolation", "noise"]
    assert err == parts["e2e_residual"]
    assert measured_error(table()) == (0.0, {})
    only = table(extra={"e2e_fit": [{"corrected_ms": 1.0, "measured_ms": 0.0}]})
    assert measured_error(only) == (0.0, {"e2e_residual": 0.0})
    noisy = table(extra={"noise": {"median_spread": "0.07"}, "interp_check": {"points": []}})
    assert measured_error(noisy) == (0.07, {"noise": 0.07})


def test_table_error_prefers_the_validation():
    tb = table(extra={"validation": {"median_error": -0.08}, "noise": {"median_spread": 0.02}})
    assert table_error(tb) == (0.08, "validated on whole models")
    tb = table(extra={"validation": {"median_error": None}, "noise": {"median_spread": 0.02}})
    assert table_error(tb) == (0.02, "the table's measured error")
    assert table_error(table()) == (None, "the table records no measured error")


def test_expected_latency_from_the_table_and_from_a_measurement():
    m = LatencyModel(table(extra={"noise": {"median_spread": 0.05}}))
    e = expected_from_table(m, 10.0)
    assert e == Expected(device="hand", ms=10.0, plus_minus_ms=0.5, basis="latency table",
                         parts={"table_ms": 10.0, "rescale": 1.0, "error": 0.05,
                                "error_from": "the table's measured error"})  # fmt: skip
    assert e.line() == "expected latency on hand: 10.00 ms (±0.50, latency table)"
    r = expected_from_table(m, 10.0, rescale=1.2)
    assert r.ms == pytest.approx(12.0) and r.plus_minus_ms == pytest.approx(0.6)
    assert r.basis == "latency table, rescaled" and r.parts["rescale"] == 1.2
    unknown = expected_from_table(LatencyModel(table()), 4.0)
    assert unknown.plus_minus_ms is None and unknown.parts["error"] is None
    assert unknown.line() == "expected latency on hand: 4.00 ms (± unknown, latency table)"
    meas = expected_from_measurement("pi", 3.256, 0.1, table_ms=3.0)
    assert meas.to_dict() == {
        "device": "pi", "ms": 3.256, "plus_minus_ms": 0.1, "basis": "measured",
        "parts": {"measured_ms": 3.256, "table_ms": 3.0},
    }  # fmt: skip
    assert meas.line() == "expected latency on pi: 3.26 ms (±0.10, measured)"
    assert expected_from_measurement("pi", 1.0, None).parts["table_ms"] is None
