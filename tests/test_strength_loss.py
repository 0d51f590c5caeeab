"""The latency-aware loss against numbers worked out by hand (benchmarks/mutation.py's
``loss`` module).

Linear curves make every expected value a sum: block(n) = 0.01·n ms, attention half
0.004·n, MLP half 0.006·n, selector 0.001·n, embed 0.3 + head 0.06. DeiT-T, DynamicViT at
blocks 3, 6, 9 (pre-block): with k₁, k₂, k₃ patches kept, the predicted latency is

    0.36 + 0.01·(3·197 + 3·(k₁+1) + 3·(k₂+1) + 3·(k₃+1)) + 0.001·(197 + (k₁+1) + (k₂+1))
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from edgeprune.budget.file import Budget
from edgeprune.core.arch import get_arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import Curve, EndToEnd, LatencyTable, Point
from edgeprune.training.loss import LatencyAwareSparsityLoss, ratio_mse

TINY = get_arch("deit_tiny")


def line(k: float) -> Curve:
    grid = (1, 100, 200)
    return Curve(grid, tuple(k * n for n in grid), tuple(k * n for n in grid))


def table(method: str | None = "dynamicvit", **kw) -> LatencyTable:
    sels = {m: line(0.001) for m in ("dynamicvit", "evit", "spvit", "avit")}
    return LatencyTable(
        device={"name": "hand", "runtime": "none", "threads": 1}, arch=TINY, method=method,
        batch=1, date="by hand", measured=False, block=line(0.01), embed=Point(0.3, 0.3),
        head=Point(0.06, 0.06), attn=line(0.004), mlp=line(0.006), selectors=sels, **kw,
    )  # fmt: skip


def dyvit_ms(k1: float, k2: float, k3: float) -> float:
    blocks = 3 * 197 + 3 * (k1 + 1) + 3 * (k2 + 1) + 3 * (k3 + 1)
    return 0.36 + 0.01 * blocks + 0.001 * (197 + (k1 + 1) + (k2 + 1))


def masks(*kept: int, batch: int = 2, width: int = 196) -> list[torch.Tensor]:
    out = []
    for k in kept:
        m = torch.zeros(batch, width)
        m[:, :k] = 1.0
        out.append(m)
    return out


def loss(target: float = 5.0, **kw) -> LatencyAwareSparsityLoss:
    return LatencyAwareSparsityLoss(LatencyModel(table()), target_ms=target, **kw)


# ---- token counts and the prediction ---------------------------------------------------
def test_hard_masks_predict_the_hand_sum():
    crit = loss()
    assert crit.method == "dynamicvit" and crit.locs == (3, 6, 9) and crit.n_stages == 3
    assert crit.expected_tokens(masks(137, 96, 67)).tolist() == [138.0, 97.0, 68.0]
    got = float(crit.predicted_ms(masks(137, 96, 67)))
    assert got == pytest.approx(dyvit_ms(137, 96, 67), rel=1e-12)


def test_soft_masks_count_their_batch_mean():
    crit = loss()
    m = [torch.tensor([[1.0, 0.5, 0.0, 0.25], [0.0, 0.0, 1.0, 1.0]]).repeat(1, 49)] * 3
    # per row 1.75·49 and 2·49 -> mean 91.875, + 1 (CLS: 197 - 196)
    assert crit.expected_tokens(m).tolist() == [92.875] * 3
    # a B×H×W mask reads as B×(H·W)
    assert crit.expected_tokens([x.reshape(2, 14, 14) for x in m]).tolist() == [92.875] * 3


def test_extra_tokens_per_stage():
    crit = loss(extra_tokens=(2, 3, 4))
    assert crit.expected_tokens(masks(10, 5, 1)).tolist() == [12.0, 8.0, 5.0]
    crit = loss(extra_tokens=2)
    assert crit.expected_tokens(masks(10, 5, 1)).tolist() == [12.0, 7.0, 3.0]
    crit = loss()  # default: the tokens the mask does not cover (197 - width)
    assert crit.expected_tokens(masks(10, 5, 1, width=190)).tolist() == [17.0, 12.0, 8.0]


def test_no_stages_predicts_the_dense_model():
    crit = loss(locs=[])
    assert crit.n_stages == 0
    counts = crit.expected_tokens([])
    assert counts.shape == (0,) and counts.dtype == torch.float64
    assert float(crit.predicted_ms([])) == pytest.approx(0.36 + 12 * 1.97, rel=1e-12)
    out = crit([])
    assert out.dtype == torch.float32 and float(out) == pytest.approx((24.0 - 5.0) / 5.0)


def test_counts_are_float64_whatever_the_masks():
    crit = loss()
    m = [torch.full((3, 196), 1 / 3, dtype=torch.float32) for _ in range(3)]
    counts = crit.expected_tokens(m)
    assert counts.dtype == torch.float64
    assert crit.predicted_ms_from_counts(counts.float()).dtype == torch.float64
    # the loss comes back in the first mask's dtype
    mixed = [m[0].double(), m[1], m[2]]
    assert crit(mixed).dtype == torch.float64


def test_defaults_and_a_small_target():
    crit = loss(target=0.5)
    assert crit.weight == 1.0 and crit.shape == "hinge" and crit.extra_tokens is None
    assert crit.target_ms == 0.5 and crit.num_tokens == 197


def test_wrong_number_of_masks():
    with pytest.raises(ValueError, match="^expected 3 masks \\(one per stage\\), got 2$"):
        loss().expected_tokens(masks(1, 1))


def test_evit_mid_block_layout():
    """EViT at 3, 6, 9 (mid-block): block 3's attention sees 197, its MLP the stage's
    output; the selectors see 197, then the earlier stages' outputs."""
    crit = LatencyAwareSparsityLoss(LatencyModel(table("evit")), 5.0, extra_tokens=2)
    assert crit._attn_idx == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert crit._mlp_idx == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    c = torch.tensor([140.0, 100.0, 72.0], dtype=torch.float64)
    want = 0.36 + 0.01 * (3 * 197 + 2 * 140 + 2 * 100 + 2 * 72)
    want += 0.004 * (197 + 140 + 100) + 0.006 * (140 + 100 + 72)
    want += 0.001 * (197 + 140 + 100)
    assert float(crit.predicted_ms_from_counts(c)) == pytest.approx(want, rel=1e-12)


def test_pre_block_layout_indices():
    crit = loss()
    assert crit._attn_idx == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert crit._mlp_idx == crit._attn_idx and crit._sel_idx == [0, 1, 2]


def test_locations_given_and_their_default_keep():
    crit = loss(locs=[2, 8])  # not the default 3 stages: planned with keep 1.0
    assert crit.locs == (2, 8) and crit.n_stages == 2
    c = torch.tensor([100.0, 50.0], dtype=torch.float64)
    want = 0.36 + 0.01 * (2 * 197 + 6 * 100 + 4 * 50) + 0.001 * (197 + 100)
    assert float(crit.predicted_ms_from_counts(c)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("method", ["evit", "spvit", "avit", "dynamicvit"])
def test_any_number_of_locations_for_every_method(method):
    """Two stages at blocks 2 and 8 (not the default three): the loss lays the counts out
    as the method does. EViT and SPViT refused it (their plan was made with keep ratio
    1.0, which prunes nothing) and A-ViT dropped both stages."""
    crit = LatencyAwareSparsityLoss(LatencyModel(table(None)), 5.0, method, locs=[2, 8])
    assert crit.n_stages == 2 and crit.locs == (2, 8)
    c = torch.tensor([100.0, 50.0], dtype=torch.float64)
    sels = 0.001 * (197 + 100)
    if method == "evit":  # mid-block: blocks 2 and 8 split attention (before) / MLP (after)
        blocks = 0.01 * (2 * 197 + 5 * 100 + 3 * 50) + 0.004 * (197 + 100) + 0.006 * (100 + 50)
    else:
        blocks = 0.01 * (2 * 197 + 6 * 100 + 4 * 50)
    want = 0.36 + blocks + sels
    assert float(crit.predicted_ms_from_counts(c)) == pytest.approx(want, rel=1e-12)


# ---- the penalty ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,above,below",
    [("hinge", 0.5, 0.0), ("squared", 0.25, 0.04), ("squared_hinge", 0.25, 0.0)],
)
def test_penalty_shapes(shape, above, below):
    crit = loss(target=10.0, shape=shape, weight=3.0)
    assert crit.shape == shape and crit.weight == 3.0 and crit.target_ms == 10.0
    up = crit.penalty(torch.tensor(15.0, dtype=torch.float64))  # +50 %
    down = crit.penalty(torch.tensor(8.0, dtype=torch.float64))  # -20 %
    assert float(up) == pytest.approx(3.0 * above) and float(down) == pytest.approx(3.0 * below)


def test_forward_is_the_penalty_of_the_prediction_in_the_masks_dtype():
    crit = loss(target=6.0, shape="squared", weight=2.0)
    m = masks(137, 96, 67)
    want = 2.0 * ((dyvit_ms(137, 96, 67) - 6.0) / 6.0) ** 2
    out = crit(m)
    assert out.dtype == torch.float32 and float(out) == pytest.approx(want, rel=1e-6)
    out64 = crit([x.double() for x in m])
    assert out64.dtype == torch.float64 and float(out64) == pytest.approx(want, rel=1e-12)


# ---- what it is built from ---------------------------------------------------------------
def test_built_from_a_table_a_model_a_budget_or_files(tmp_path):
    tb = table()
    assert LatencyAwareSparsityLoss(tb, 5.0).latency.table is tb
    crit = LatencyAwareSparsityLoss(LatencyModel(table(method=None)), 5.0, "spvit")
    assert crit.method == "spvit"
    budget = Budget(
        method="dynamicvit", arch="deit_tiny", locs=(3, 6), keep_ratios=(0.7, 0.5),
        target_ms=8.0, predicted_ms=7.0, data={"profile_table": tb.to_dict()},
        reanchor_scale=2.0,
    )  # fmt: skip
    crit = LatencyAwareSparsityLoss(budget)
    assert (crit.method, crit.locs, crit.target_ms) == ("dynamicvit", (3, 6), 4.0)
    crit = LatencyAwareSparsityLoss(budget, 3.0, "dynamicvit", locs=[4])
    assert (crit.locs, crit.target_ms) == ((4,), 3.0)
    with pytest.raises(EdgepruneError, match="^method evit contradicts the budget's dynamicvit$"):
        LatencyAwareSparsityLoss(budget, method="evit")
    p = tmp_path / "t.json"
    tb.save(p)
    crit = LatencyAwareSparsityLoss(p, 5.0)
    assert crit.method == "dynamicvit" and crit.latency.source == str(p)
    assert LatencyAwareSparsityLoss(str(p), 5.0).latency.table.device["name"] == "hand"
    b = tmp_path / "b.json"
    b.write_text(json.dumps({
        "schema": "edgeprune.budget", "version": 1, "method": "dynamicvit",
        "arch": "deit_tiny", "locs": [3], "keep_ratios": [0.5], "target_ms": 9.0,
        "predicted_ms": 8.0, "profile_table": tb.to_dict(),
    }))  # fmt: skip
    crit = LatencyAwareSparsityLoss(b)
    assert (crit.locs, crit.target_ms) == ((3,), 9.0)
    with pytest.raises(TypeError, match="^expected a profile, budget, LatencyModel or path, got "
                       "<class 'int'>$"):  # fmt: skip
        LatencyAwareSparsityLoss(42, 5.0)
    with pytest.raises(EdgepruneError, match="does not exist"):
        LatencyAwareSparsityLoss(tmp_path / "missing.json", 5.0)


def test_a_file_that_is_not_json_is_one_line_and_json_not_a_budget_is_a_profile(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b"\xff\xfe not json")
    with pytest.raises(EdgepruneError, match="neither a latency table nor a budget: not JSON"):
        LatencyAwareSparsityLoss(p, 5.0)
    p.write_text("[1, 2]")  # JSON, but no object: not a budget
    with pytest.raises(EdgepruneError, match="not a valid latency table"):
        LatencyAwareSparsityLoss(p, 5.0)


def test_bad_arguments_say_what_is_wrong():
    m = LatencyModel(table())
    for bad in (None, 0.0, -1.0, math.inf, math.nan):
        with pytest.raises(EdgepruneError, match=f"^target_ms {bad} is not a positive finite"):
            LatencyAwareSparsityLoss(m, bad)
    with pytest.raises(EdgepruneError) as e:
        LatencyAwareSparsityLoss(m, 5.0, shape="cubic")
    assert e.value.message == "unknown loss shape 'cubic'"
    assert e.value.hint == "expected: hinge, squared, squared_hinge"
    with pytest.raises(EdgepruneError) as e:
        LatencyAwareSparsityLoss(LatencyModel(table(method=None)), 5.0)
    assert (e.value.message, e.value.hint) == ("the profile names no method", "pass method=...")
    with pytest.raises(EdgepruneError, match="measured for method dynamicvit, but the model is"):
        LatencyAwareSparsityLoss(m, 5.0, "evit")


def test_corrected_table_enters_the_loss():
    crit = LatencyAwareSparsityLoss(LatencyModel(table(e2e=EndToEnd((), 0.5, 2.0))), 5.0)
    got = float(crit.predicted_ms(masks(137, 96, 67)))
    assert got == pytest.approx(0.5 + 2.0 * dyvit_ms(137, 96, 67), rel=1e-12)


# ---- ratio_mse ----------------------------------------------------------------------------
def test_ratio_mse_by_hand():
    m = [torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]), torch.tensor([[1.0, 1.0]] * 2)]
    # stage 0: means 0.75, 0.25 vs 0.5 -> 0.0625 each; stage 1: 1.0 vs 0.25 -> 0.5625
    assert float(ratio_mse(m, [0.5, 0.25])) == pytest.approx((0.0625 + 0.5625) / 2)
    assert float(ratio_mse([m[0].reshape(2, 2, 2)], [0.5])) == pytest.approx(0.0625)
    with pytest.raises(ValueError, match="^2 masks but 1 ratios$"):
        ratio_mse(m, [0.5])
