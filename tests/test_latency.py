"""Latency model, budget search and the latency-aware loss (synthetic: measured false)."""

from __future__ import annotations

import math

import pytest
import torch

from edgeprune.budget.search import MAX_FREE_CANDIDATES, Sensitivity, search, target_from
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.plan import SelectorStage, TokenPlan, dense_plan
from edgeprune.core.source import resolve
from edgeprune.latency.model import LatencyModel, interp
from edgeprune.training.loss import LatencyAwareSparsityLoss, ratio_mse
from tests.profile_helper import synthetic_table


@pytest.fixture
def model():
    return LatencyModel(synthetic_table())


def test_synthetic_table_says_so():
    assert synthetic_table().measured is False


def test_interp_equals_curve_at_including_extrapolation():
    c = synthetic_table().block
    ns = [0.0, 0.5, 1, 7.3, 50, 99.9, 150, 196.5, 197, 230.0]
    got = interp(c, torch.tensor(ns, dtype=torch.float64))
    for n, g in zip(ns, got.tolist(), strict=True):
        assert g == pytest.approx(c.at(n), abs=1e-12)


def test_predict_is_sum_of_parts(model):
    tb = model.table
    d = model.predict(dense_plan(tb.arch))
    assert d.total_ms == pytest.approx(
        tb.embed.median_ms + tb.head.median_ms + 12 * tb.block.at(197)
    )
    p = model.predict(resolve("deit_tiny:dynamicvit@0.7").plan)
    assert p.attn_tokens[-1] == 68 and len(p.blocks_ms) == 12 and len(p.selectors_ms) == 3
    sel = tb.selectors["dynamicvit"]
    assert p.selectors_ms[0] == pytest.approx(sel.at(197))
    assert p.total_ms == pytest.approx(
        tb.embed.median_ms + tb.head.median_ms + sum(p.blocks_ms) + sum(p.selectors_ms)
    )
    assert p.total_ms < d.total_ms


def _mid_plan(arch):
    n = arch.num_tokens
    attn = (n,) * 4 + (140,) * 8
    mlp = (n,) * 3 + (140,) * 9
    return TokenPlan(
        arch, "dynamicvit", (3,), (0.7,), attn, mlp, (SelectorStage(3, "mid", n, 140),)
    )


def test_mid_block_plan_uses_attn_and_mlp_curves():
    tb = synthetic_table(split=True)
    p = LatencyModel(tb).predict(_mid_plan(tb.arch))
    assert p.blocks_ms[3] == pytest.approx(tb.attn.at(197) + tb.mlp.at(140))
    assert p.blocks_ms[2] == pytest.approx(tb.block.at(197))
    assert p.blocks_ms[4] == pytest.approx(tb.block.at(140))
    with pytest.raises(EdgepruneError, match="attention/MLP"):
        LatencyModel(synthetic_table()).predict(_mid_plan(tb.arch))


def test_selector_and_arch_mismatches_are_clear():
    plan = resolve("deit_tiny:dynamicvit@0.7").plan
    with pytest.raises(EdgepruneError, match="no selector timings for method dynamicvit"):
        LatencyModel(synthetic_table(method=None)).predict(plan)
    with pytest.raises(
        EdgepruneError, match="measured for method evit, but the model is dynamicvit"
    ):
        LatencyModel(synthetic_table(method="evit")).predict(plan)
    # a dense plan needs no selector curve
    LatencyModel(synthetic_table(method=None)).predict(resolve("deit_tiny").plan)
    with pytest.raises(EdgepruneError, match="is for deit_tiny, but the model is deit_small"):
        LatencyModel(synthetic_table()).predict(resolve("deit_small:dynamicvit").plan)


# ---- budget -----------------------------------------------------------------------
def test_target_fps_and_bad_targets():
    assert target_from(None, 30) == pytest.approx(33.333, abs=1e-3)
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(EdgepruneError):
            target_from(bad, None)
    with pytest.raises(EdgepruneError, match="exactly one"):
        target_from(1.0, 30)


def test_geometric_budget_meets_target_and_is_tight(model):
    r = search(model, 7.0, "dynamicvit", "geometric")
    c = r.chosen
    assert r.status == "ok" and c.predicted_ms <= 7.0
    assert r.margin_ms == pytest.approx(7.0 - c.predicted_ms, abs=1e-12)
    # the next larger base ratio that changes the plan goes over the target
    base = c.keep_ratios[0]
    bigger = [x for x in r.candidates if x.keep_ratios[0] > base]
    nxt = min(bigger, key=lambda x: x.keep_ratios[0])
    assert nxt.predicted_ms > 7.0 and nxt.kept_tokens > c.kept_tokens
    assert c.keep_ratios[1] == pytest.approx(base**2, abs=1e-9)


def test_free_budget_keeps_at_least_as_many_tokens_in_bounded_work(model):
    """Its cost is bounded by what it weighs (not by a wall-clock assert): at most
    MAX_FREE_CANDIDATES grid schedules plus the 9³ of the refinement."""
    g = search(model, 7.0, "dynamicvit", "geometric").chosen
    r = search(model, 7.0, "dynamicvit", "free")
    f = r.chosen
    assert f.predicted_ms <= 7.0 and f.kept_tokens >= g.kept_tokens
    assert list(f.keep_ratios) == sorted(f.keep_ratios, reverse=True)
    assert len(r.candidates) <= MAX_FREE_CANDIDATES + 9**3


def test_budget_dense_meets_and_unreachable(model):
    r = search(model, 100.0, "dynamicvit")
    assert r.status == "dense" and r.chosen.keep_ratios == () and r.dense_ms <= 100
    with pytest.raises(EdgepruneError, match=r"unreachable.*predicts \d+\.\d+ ms"):
        search(model, 1.0, "dynamicvit")


def test_sensitivity_changes_the_choice(model):
    # stage 3 is very sensitive, stage 9 not at all: keep stage 3 high
    sens = Sensitivity(
        80.0,
        {
            3: ((0.1, 1.0), (40.0, 80.0)),
            6: ((0.1, 1.0), (79.0, 80.0)),
            9: ((0.1, 1.0), (80.0, 80.0)),
        },
    )
    plain = search(model, 7.0, "dynamicvit", "free").chosen
    acc = search(model, 7.0, "dynamicvit", "free", sensitivity=sens).chosen
    assert acc.predicted_ms <= 7.0
    assert acc.accuracy >= sens.predict((3, 6, 9), plain.keep_ratios)
    assert acc.keep_ratios[0] >= plain.keep_ratios[0]


def test_sensitivity_prediction_is_floored_at_zero(model):
    # three sensitive stages: the additive model alone would predict 80 - 3*70 = -130 %
    sens = Sensitivity(80.0, {loc: ((0.1, 1.0), (10.0, 80.0)) for loc in (3, 6, 9)})
    assert sens.predict((3, 6, 9), (0.1, 0.1, 0.1)) == 0.0
    assert sens.predict((3, 6, 9), (0.1, 1.0, 1.0)) == pytest.approx(10.0)
    preds = sens.predict_many((3, 6, 9), [(0.1, 0.1, 0.1), (0.8, 0.8, 0.8), (1.0, 1.0, 1.0)])
    assert preds[0] == 0.0 and 0.0 < preds[1] < 80.0 and preds[2] == pytest.approx(80.0)
    # the search sees the floored value too: nothing it chooses predicts below 0 %
    res = search(model, 7.0, "dynamicvit", "free", sensitivity=sens)
    assert min(c.accuracy for c in res.candidates) == 0.0


# ---- loss -----------------------------------------------------------------------
def _hard_masks(plan, batch=2):
    masks = []
    for s in plan.selectors:
        m = torch.zeros(batch, 196)
        m[:, : s.tokens_out - 1] = 1.0
        masks.append(m)
    return masks


def test_loss_predict_and_budget_agree(model):
    r = search(model, 7.0, "dynamicvit", "geometric")
    plan = r.chosen.plan
    crit = LatencyAwareSparsityLoss(model, target_ms=7.0, method="dynamicvit")
    via_loss = float(crit.predicted_ms(_hard_masks(plan)))
    via_predict = model.predict(plan).total_ms
    assert abs(via_loss - via_predict) < 1e-6
    assert abs(via_predict - r.chosen.predicted_ms) < 1e-6


def test_gradient_pushes_masks_down_above_target(model):
    crit = LatencyAwareSparsityLoss(model, target_ms=5.0, method="dynamicvit", shape="hinge")
    masks = [torch.full((4, 196), v, requires_grad=True) for v in (0.9, 0.8, 0.7)]
    loss = crit(masks)
    assert float(loss.detach()) > 0
    loss.backward()
    for m in masks:
        assert (m.grad > 0).all()  # gradient descent lowers every keep probability
    # below the target the hinge is silent
    crit_lo = LatencyAwareSparsityLoss(model, target_ms=50.0, method="dynamicvit")
    masks = [torch.full((4, 196), 0.5, requires_grad=True) for _ in range(3)]
    crit_lo(masks).backward()
    assert all(float(m.grad.abs().sum()) == 0 for m in masks)


@pytest.mark.parametrize("shape", ["squared", "hinge"])
def test_free_logits_converge_to_target(model, shape):
    """squared (two-sided) lands on the target; hinge only pushes down while above it
    (Adam's momentum carries it a little below)."""
    target = 6.0
    crit = LatencyAwareSparsityLoss(model, target_ms=target, method="dynamicvit", shape=shape)
    torch.manual_seed(0)
    logits = [
        torch.full((1, 196), 3.0).add_(0.1 * torch.randn(1, 196)).requires_grad_() for _ in range(3)
    ]
    opt = torch.optim.Adam(logits, lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        keep, masks = torch.ones(1, 196), []
        for lg in logits:  # cumulative, like DynamicViT's policy
            keep = keep * torch.sigmoid(lg)
            masks.append(keep)
        crit(masks).backward()
        opt.step()
    pred = float(crit.predicted_ms(masks).detach())
    if shape == "squared":
        assert abs(pred - target) / target < 0.02, pred
    else:
        assert 0.85 * target < pred <= 1.02 * target, pred


def test_ratio_mse_matches_dynamicvit():
    masks = [torch.tensor([[1.0, 0.0, 1.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]])]
    assert float(ratio_mse(masks, [0.5, 0.25])) == pytest.approx(((0.25**2) + 0.0) / 2)


def test_loss_bad_arguments(model):
    for bad in (0.0, -3.0, math.nan):
        with pytest.raises(EdgepruneError, match="target"):
            LatencyAwareSparsityLoss(model, target_ms=bad, method="dynamicvit")
    with pytest.raises(EdgepruneError, match="shape"):
        LatencyAwareSparsityLoss(model, target_ms=5.0, method="dynamicvit", shape="cubic")
