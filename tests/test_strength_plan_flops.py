"""TokenPlan and FLOPs against numbers worked out by hand (benchmarks/mutation.py's
``plan_flops`` module: mutants the paper-within-3 % tests let through).

A toy architecture keeps every term of the FLOPs convention visible in the total:
C = 6, H = 2 heads, MLP hidden 18, 2×2 patches of a 4×4 one-channel image (4 patches,
5 tokens), 5 classes, depth 3. Per block, with n tokens in attention and m in the MLP:

    attention(n) = 5nC (norm1) + 3nC² (qkv) + 2n²C (q@kᵀ, attn@v) + 5Hn² (softmax)
                   + nC² (proj)                            = 174·n + 22·n²
    mlp(m)       = 5mC (norm2) + 2mC·18 (fc1, fc2) + 8m·18 (GELU)   = 390·m
    fixed        = 4·1·2²·6 (stem) + 6·5 (classifier) + 5·final·6 (final norm)
"""

from __future__ import annotations

import pytest

from edgeprune.core.arch import Arch, get_arch
from edgeprune.core.flops import block_macs, plan_flops
from edgeprune.core.plan import SelectorStage, TokenPlan, dense_plan
from edgeprune.core.source import resolve

TOY = Arch(
    "toy", embed_dim=6, num_heads=2, depth=3, patch_size=2, img_size=4,
    mlp_ratio=3.0, num_classes=5, in_chans=1,
)  # fmt: skip
G = 1e9


def _mid_plan() -> TokenPlan:
    """Two mid-block stages: 5 -> 3 in block 1, 3 -> 2 in block 2."""
    stages = (SelectorStage(1, "mid", 5, 3), SelectorStage(2, "mid", 3, 2))
    return TokenPlan(TOY, "evit", (1, 2), (0.5, 0.5), (5, 5, 3), (5, 3, 2), stages)


def test_block_macs_by_hand():
    assert block_macs(TOY, 5) == 3370  # 1420 + 1950
    assert block_macs(TOY, 5, 3) == 2590  # attention at 5 (1420), MLP at 3 (1170)
    assert block_macs(TOY, 3, 2) == 1500  # 720 + 780
    assert block_macs(TOY, 1, 1) == 196 + 390


def test_dense_flops_by_hand():
    fl = plan_flops(dense_plan(TOY))
    # 3 blocks of 3370, stem 96, classifier 30, final norm over 5 tokens 150
    assert fl.dense == 10386 / G
    assert fl.pruned == 10386 / G
    assert fl.per_block == (3370 / G,) * 3
    assert fl.selectors == 0 and fl.per_selector == ()


def test_mid_block_plan_flops_by_hand():
    fl = plan_flops(_mid_plan(), [7, 11])
    assert fl.per_block == (3370 / G, 2590 / G, 1500 / G)
    # the final norm sees the 2 tokens leaving the last MLP: 96 + 30 + 60
    assert fl.pruned == (7460 + 186) / G
    assert fl.dense == 10386 / G
    assert fl.selectors == 18 / G
    assert fl.per_selector == (7 / G, 11 / G)
    assert fl.total == fl.pruned + fl.selectors


def test_selectors_without_their_macs_count_zero():
    fl = plan_flops(_mid_plan())
    assert fl.selectors == 0 and fl.per_selector == (0.0, 0.0)


def test_flop_report_dict_rounds_to_its_digits():
    fl = resolve("deit_small:dynamicvit@0.7").flops()
    d = fl.to_dict()
    assert list(d) == ["dense", "pruned", "selectors", "total", "per_block", "per_selector"]
    assert d["dense"] == round(fl.dense, 4) != round(fl.dense, 5)
    assert d["pruned"] == round(fl.pruned, 4) != round(fl.pruned, 5)
    assert d["selectors"] == round(fl.selectors, 4) != round(fl.selectors, 5)
    assert d["total"] == round(fl.pruned + fl.selectors, 4) != round(fl.total, 5)
    assert (
        d["per_block"] == [round(x, 5) for x in fl.per_block] != [round(x, 6) for x in fl.per_block]
    )
    assert (
        d["per_selector"]
        == [round(x, 5) for x in fl.per_selector]
        != [round(x, 6) for x in fl.per_selector]
    )
    assert len(d["per_block"]) == 12 and len(d["per_selector"]) == 3


def test_dense_plan_fields():
    p = dense_plan(TOY)
    assert p.method == "dense" and dense_plan(TOY, "evit").method == "evit"
    assert p.prune_locs == () and p.keep_ratios == () and p.selectors == () and p.options == ()
    assert p.attn_tokens == p.mlp_tokens == (5, 5, 5)
    assert p.final_tokens == 5


def test_token_plan_needs_one_count_per_block_for_both_halves():
    msg = "^a TokenPlan needs one token count per block$"
    with pytest.raises(ValueError, match=msg):
        TokenPlan(TOY, "dense", (), (), (5, 5), (5, 5, 5))
    with pytest.raises(ValueError, match=msg):
        TokenPlan(TOY, "dense", (), (), (5, 5, 5), (5, 5))
    TokenPlan(TOY, "dense", (), (), (5, 5, 5), (5, 5, 5))  # both right: accepted


def test_token_plan_dict():
    p = TokenPlan(
        TOY, "evit", (1, 2), (0.5, 0.25), (5, 5, 3), (5, 3, 2),
        (SelectorStage(1, "mid", 5, 3), SelectorStage(2, "mid", 3, 2)),
        (("r", 4), ("schedule", "given")),
    )  # fmt: skip
    assert p.to_dict() == {
        "arch": "toy",
        "method": "evit",
        "prune_locs": [1, 2],
        "keep_ratios": [0.5, 0.25],
        "tokens_per_block": [5, 5, 3],
        "mlp_tokens_per_block": [5, 3, 2],
        "selectors": [
            {"block": 1, "where": "mid", "tokens_in": 5, "tokens_out": 3},
            {"block": 2, "where": "mid", "tokens_in": 3, "tokens_out": 2},
        ],
        "options": {"r": 4, "schedule": "given"},
    }
    assert type(p.to_dict()["prune_locs"]) is list


def test_deit_tiny_dense_gmacs_exactly():
    """DeiT-T at 197 tokens, every term: attention 197·(5·192 + 4·192²) + 2·197²·192 +
    5·3·197², MLP 197·(5·192 + 2·192·768 + 8·768); stem 196·3·256·192, head 192·1000,
    final norm 5·197·192."""
    a = get_arch("deit_tiny")
    attn = 197 * (5 * 192 + 4 * 192**2) + 2 * 197**2 * 192 + 5 * 3 * 197**2
    mlp = 197 * (5 * 192 + 2 * 192 * 768 + 8 * 768)
    fixed = 196 * 3 * 256 * 192 + 192 * 1000 + 5 * 197 * 192
    assert plan_flops(dense_plan(a)).dense == (fixed + 12 * (attn + mlp)) / G
