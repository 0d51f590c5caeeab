"""The end-to-end correction of the latency model: fit, schema, and that predict,
budget and the loss still agree once it is applied."""

from __future__ import annotations

import json

import pytest
import torch

from edgeprune.budget.search import search
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.plan import dense_plan
from edgeprune.core.source import resolve
from edgeprune.latency.model import LatencyModel, fit_correction
from edgeprune.latency.table import Anchor, EndToEnd, from_dict
from edgeprune.training.loss import LatencyAwareSparsityLoss
from tests.profile_helper import synthetic_table

OFFSET, SCALE = 0.4, 1.15


def test_fit_recovers_offset_and_scale():
    raw = [20.0, 14.0, 10.0]
    a, b = fit_correction(raw, [OFFSET + SCALE * x for x in raw])
    assert a == pytest.approx(OFFSET) and b == pytest.approx(SCALE)


def test_fit_falls_back_to_a_scale():
    # one anchor: a scale through zero
    assert fit_correction([10.0], [12.0]) == (0.0, pytest.approx(1.2))
    # anchors too close together to separate offset from scale
    a, b = fit_correction([10.0, 10.5], [12.0, 12.1])
    assert a == 0.0 and b == pytest.approx((120 + 12.1 * 10.5) / (100 + 10.5**2))
    # an implausible affine fit (scale 3) is not trusted either
    a, b = fit_correction([10.0, 20.0], [5.0, 35.0])
    assert a == 0.0 and 1.0 < b < 2.0
    with pytest.raises(ValueError):
        fit_correction([], [])


def test_corrected_prediction_is_affine_in_the_pieces_and_parts_add_up():
    raw = LatencyModel(synthetic_table())
    fitted = LatencyModel(synthetic_table(e2e=(OFFSET, SCALE)))
    assert fitted.uncorrected().predict(dense_plan(fitted.arch)).total_ms == pytest.approx(
        raw.predict(dense_plan(raw.arch)).total_ms
    )
    for plan in (dense_plan(raw.arch), resolve("deit_tiny:dynamicvit@0.6").plan):
        r, p = raw.predict(plan), fitted.predict(plan)
        assert p.total_ms == pytest.approx(OFFSET + SCALE * r.total_ms, rel=1e-12)
        parts = p.overhead_ms + p.embed_ms + p.head_ms + sum(p.blocks_ms) + sum(p.selectors_ms)
        assert parts == pytest.approx(p.total_ms, rel=1e-12)
        assert p.to_dict()["overhead_ms"] == OFFSET and p.to_dict()["e2e_scale"] == SCALE


def test_loss_predict_and_budget_agree_with_the_correction():
    model = LatencyModel(synthetic_table(e2e=(OFFSET, SCALE)))
    target = 9.0
    r = search(model, target, "dynamicvit", "geometric")
    assert r.chosen.predicted_ms <= target
    plan = r.chosen.plan
    masks = []
    for s in plan.selectors:
        m = torch.zeros(2, 196)
        m[:, : s.tokens_out - 1] = 1.0
        masks.append(m)
    crit = LatencyAwareSparsityLoss(model, target_ms=target, method="dynamicvit")
    via_loss = float(crit.predicted_ms(masks))
    via_predict = model.predict(plan).total_ms
    assert abs(via_loss - via_predict) < 1e-6 and abs(via_predict - r.chosen.predicted_ms) < 1e-6
    # the correction changes the choice: the uncorrected model would keep more tokens
    plain = search(model.uncorrected(), target, "dynamicvit", "geometric")
    assert plain.chosen.kept_tokens > r.chosen.kept_tokens


def _with_e2e(e2e: dict) -> dict:
    d = synthetic_table().to_dict()
    d["tables"]["e2e"] = e2e
    return d


def test_table_round_trip_and_bad_e2e():
    anchor = Anchor("deit_tiny:dense", (197,) * 12, (197,) * 12, (), 20.0, 21.0)
    tb = synthetic_table(e2e=(OFFSET, SCALE))
    tb.e2e = EndToEnd((anchor,), OFFSET, SCALE)
    back = from_dict(json.loads(json.dumps(tb.to_dict())))
    assert back.e2e == tb.e2e
    good = tb.e2e.to_dict()
    for bad, needle in (
        ({**good, "scale": 0.0}, "tables.e2e.scale: Input should be greater than 0"),
        ({**good, "offset_ms": "x"}, "tables.e2e.offset_ms: Input should be a valid number"),
        ({"anchors": "no"}, "tables.e2e.anchors: Input should be a valid list"),
        ({**good, "anchors": [{**anchor.to_dict(), "attn_tokens": [197]}]}, "12 token counts"),
        (
            {**good, "anchors": [{**anchor.to_dict(), "median_ms": -1}]},
            r"anchors\[0\].median_ms: Input should be greater than or equal to 0.000000001",
        ),
    ):
        with pytest.raises(EdgepruneError, match=needle) as e:
            from_dict(_with_e2e(bad), "p.json")
        assert "\n" not in str(e.value)
