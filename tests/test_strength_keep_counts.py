"""Keep counts: where keep ratios (ToMe: merge counts) become the token counts of a
TokenPlan, against the methods' published rules written out here (benchmarks/mutation.py's
``keep_counts`` module).

- DynamicViT: ``int(196·ρ)`` patches kept before the block, ρ cumulative; + CLS.
- SPViT: the same count, plus one package token per stage so far.
- EViT: ``ceil(rate·(N − 1))`` tokens kept between attention and MLP, + CLS + one fused.
- A-ViT: ``max(1, round(196·r))`` patches, a stage only where it drops a token.
- ToMe: ``r`` merged per block, at most ``(N − 1) // 2``, between attention and MLP.
"""

from __future__ import annotations

import math
import random

import pytest

from edgeprune.core.arch import Arch, get_arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.core.methods.base import PredictorMethod, geometric
from edgeprune.core.methods.evit import evit_keep
from edgeprune.core.methods.tome import merge_plan
from edgeprune.core.plan import SelectorStage

TINY = get_arch("deit_tiny")
SHALLOW = Arch("shallow", embed_dim=192, num_heads=3, depth=6)


def plan_of(method: str, locs, keep, arch: Arch = TINY, **options):
    return get_method(method).token_plan(arch, MethodConfig(tuple(locs), tuple(keep), options))


def layout(arch: Arch, stages: list[tuple[int, str, int, int]]):
    """attn and mlp token counts per block of a plan whose stages are
    (block, where, tokens_in, tokens_out)."""
    attn, mlp, n, at = [], [], arch.num_tokens, {s[0]: s for s in stages}
    for b in range(arch.depth):
        s = at.get(b)
        if s and s[1] == "pre":
            n = s[3]
        attn.append(n)
        if s and s[1] == "mid":
            n = s[3]
        mlp.append(n)
    return tuple(attn), tuple(mlp)


def check(plan, arch: Arch, stages: list[tuple[int, str, int, int]]) -> None:
    assert [(s.block, s.where, s.tokens_in, s.tokens_out) for s in plan.selectors] == stages
    assert (plan.attn_tokens, plan.mlp_tokens) == layout(arch, stages)
    assert all(isinstance(s, SelectorStage) for s in plan.selectors)


def schedules(seed: int, count: int):
    """Random cumulative schedules at 1–3 increasing locations of a 12-block model."""
    rng = random.Random(seed)
    for _ in range(count):
        locs = sorted(rng.sample(range(1, 12), rng.randint(1, 3)))
        keep = sorted((round(rng.uniform(0.05, 1.0), 3) for _ in locs), reverse=True)
        yield locs, keep


def test_dynamicvit_counts_match_int_196_rho():
    for locs, keep in schedules(1, 200):
        stages, n = [], 197
        for loc, rho in zip(locs, keep, strict=True):
            kept = int(196 * rho)
            stages.append((loc, "pre", n, kept + 1))
            n = kept + 1
        plan = plan_of("dynamicvit", locs, keep)
        check(plan, TINY, stages)
        assert plan.method == "dynamicvit" and plan.prune_locs == tuple(locs)
        assert plan.keep_ratios == tuple(keep)


def test_dynamicvit_on_a_smaller_image_and_the_one_patch_floor():
    small = Arch("small", embed_dim=192, num_heads=3, depth=6, img_size=64)  # 16 patches
    check(plan_of("dynamicvit", (2, 4), (0.5, 0.0625), small), small,
          [(2, "pre", 17, 9), (4, "pre", 9, 2)])  # fmt: skip
    with pytest.raises(EdgepruneError, match="keeps no patch token at block 4"):
        plan_of("dynamicvit", (2, 4), (0.5, 0.06), small)
    assert PredictorMethod.kept_patches(small, 0.0625, 1) == 1
    assert PredictorMethod.kept_patches(TINY, 0.7, 3) == 137
    msg = "^keep ratio 0.005 keeps no patch token at block 3$"
    with pytest.raises(EdgepruneError, match=msg) as e:
        PredictorMethod.kept_patches(TINY, 0.005, 3)
    assert e.value.hint == "use a ratio of at least 0.0051"


def test_spvit_counts_add_one_package_token_per_stage():
    for locs, keep in schedules(2, 200):
        stages, n, ok = [], 197, True
        for packs, (loc, rho) in enumerate(zip(locs, keep, strict=True), start=1):
            kept = int(196 * rho)
            if kept >= n - packs:  # all the patches in: 1 CLS + (packs - 1) packages
                ok = False
                break
            stages.append((loc, "pre", n, 1 + kept + packs))
            n = 1 + kept + packs
        if not ok:
            with pytest.raises(EdgepruneError, match="drops no token at block"):
                plan_of("spvit", locs, keep)
            continue
        check(plan_of("spvit", locs, keep), TINY, stages)


def test_spvit_refuses_a_stage_that_drops_nothing_at_the_edge():
    # 0.9 keeps 176 patches; then 176 of 176 (+1 package) drops nothing
    with pytest.raises(EdgepruneError, match="^keep ratio 0.9 drops no token at block 6$") as e:
        plan_of("spvit", (3, 6), (0.9, 0.9))
    assert e.value.hint == "SPViT's package token needs at least one dropped token per stage"
    with pytest.raises(EdgepruneError, match="^keep ratio 0.001 keeps no patch token at block 3$"):
        plan_of("spvit", (3,), (0.001,))
    # 175 of the 176 patches: one dropped, one package token more: 178 again
    check(plan_of("spvit", (3, 6), (0.9, 175 / 196 + 1e-9)), TINY,
          [(3, "pre", 197, 178), (6, "pre", 178, 178)])  # fmt: skip


def test_evit_counts_match_ceil_rate_times_n_minus_1():
    rng = random.Random(3)
    for _ in range(200):
        locs = sorted(rng.sample(range(1, 12), rng.randint(1, 3)))
        keep = [round(rng.uniform(0.05, 0.95), 3) for _ in locs]
        stages, n, ok = [], 197, True
        for loc, rate in zip(locs, keep, strict=True):
            k = math.ceil(rate * (n - 1))
            if k >= n - 1:
                ok = False
                break
            stages.append((loc, "mid", n, k + 2))
            n = k + 2
        if not ok:
            with pytest.raises(EdgepruneError, match="keeps all"):
                plan_of("evit", locs, keep)
            continue
        check(plan_of("evit", locs, keep), TINY, stages)


def test_evit_keep_and_its_edge():
    assert evit_keep(197, 0.7) == 138  # ceil(137.2)
    assert evit_keep(140, 0.5) == 70  # exactly 69.5 -> 70
    assert evit_keep(11, 0.3) == 3
    # 0.999 of 196 is 195.8 -> 196: every token kept, refused
    with pytest.raises(
        EdgepruneError, match="^keep rate 0.999 keeps all 196 tokens at block 3$"
    ) as e:
        plan_of("evit", (3,), (0.999,))
    assert e.value.hint == "EViT then prunes nothing there: lower the rate or drop the location"
    # 0.99 -> 195 of 196: one token fewer is fine (195 + CLS + fused)
    check(plan_of("evit", (3,), (0.99,)), TINY, [(3, "mid", 197, 197)])


def test_avit_counts_round_and_skip_stages_that_drop_nothing():
    rng = random.Random(4)
    for _ in range(200):
        locs = sorted(rng.sample(range(1, 12), rng.randint(1, 4)))
        keep = sorted((round(rng.uniform(0.0, 1.0), 3) for _ in locs), reverse=True)
        stages, n = [], 197
        for loc, r in zip(locs, keep, strict=True):
            kept = max(1, round(196 * r))
            if kept < n - 1:
                stages.append((loc, "pre", n, kept + 1))
                n = kept + 1
        check(plan_of("avit", locs, keep), TINY, stages)


def test_avit_edges():
    # round(196 * 0.5) = 98; 0.001 rounds to 0 -> one patch; 1.0 keeps 196: no stage
    check(plan_of("avit", (2, 5, 8), (1.0, 0.5, 0.001)), TINY,
          [(5, "pre", 197, 99), (8, "pre", 99, 2)])  # fmt: skip
    # 195 of 196 patches still drops one (n - 1 = 196 > 195)
    check(plan_of("avit", (2,), (195 / 196,)), TINY, [(2, "pre", 197, 196)])


@pytest.mark.parametrize("r", [1, 2, 7, 16, 40, 98])
def test_tome_merges_r_per_block_capped_at_half(r):
    n, rs = 197, []
    for _ in range(12):
        rb = min(r, (n - 1) // 2)
        rs.append(rb)
        n -= rb
    assert merge_plan(197, 12, r) == rs
    stages, n = [], 197
    for b, rb in enumerate(rs):
        if rb > 0:
            stages.append((b, "mid", n, n - rb))
            n -= rb
    plan = get_method("tome").token_plan(TINY, get_method("tome").config_for(r, TINY))
    check(plan, TINY, stages)
    cfg = get_method("tome").config_for(r, TINY)
    assert cfg.options == {"r": r}
    assert cfg.prune_locs == tuple(s[0] for s in stages)
    assert cfg.keep_ratios == tuple(round(s[3] / s[2], 4) for s in stages)


def test_tome_without_r_merges_the_default_16():
    plan = get_method("tome").token_plan(TINY, MethodConfig((), (), {}))
    assert [s.tokens_in - s.tokens_out for s in plan.selectors] == merge_plan(197, 12, 16)
    assert plan.mlp_tokens[-1] == 197 - 11 * 16 - 10  # the last block: (21 - 1) // 2


def test_tome_merge_plan_edges_and_r_range():
    assert merge_plan(5, 4, 3) == [2, 1, 0, 0]  # (5-1)//2 = 2, (3-1)//2 = 1, then 0
    assert merge_plan(2, 3, 5) == [0, 0, 0]
    assert merge_plan(197, 0, 16) == []
    tome = get_method("tome")
    plan = tome.token_plan(SHALLOW, MethodConfig((), (), {"r": "r40"}))
    # 40 while it fits, then (N - 1) // 2: 38 of 77, 19 of 39, 9 of 20
    check(plan, SHALLOW, [(b, "mid", 197 - 40 * b, 157 - 40 * b) for b in range(3)]
          + [(3, "mid", 77, 39), (4, "mid", 39, 20), (5, "mid", 20, 11)])  # fmt: skip
    assert tome.config_for(98, TINY).keep_ratios[0] == round(99 / 197, 4)
    with pytest.raises(EdgepruneError, match="ToMe r=99 does not fit a sequence of 197 tokens"):
        tome.config_for(99, TINY)
    with pytest.raises(EdgepruneError, match="^ToMe r=0 does not") as e:
        tome.config_for(0, TINY)
    assert e.value.hint == "r merges tokens in every block: use 1 ≤ r ≤ 98 for deit_tiny"
    assert tome.config_for(1, TINY).prune_locs == tuple(range(12))


def test_geometric_schedules():
    assert geometric(0.7, 3) == (0.7, 0.49, 0.343)
    assert geometric(0.7, 3, cumulative=False) == (0.7, 0.7, 0.7)
    assert geometric(0.3, 2, True) == (0.3, 0.09)
    assert geometric(1 / 3, 2) == (round(1 / 3, 10), round(1 / 9, 10))
    assert geometric(0.5, 0) == ()


def test_dense_plan_and_make_plan_fields():
    plan = plan_of("dense", (), ())
    assert plan.method == "dense" and plan.attn_tokens == (197,) * 12 and not plan.selectors
    plan = get_method("tome").token_plan(TINY, MethodConfig((), (), {"r": 8, "a": 1}))
    assert plan.options == (("a", 1), ("r", 8))  # sorted
    assert plan.method == "tome" and plan.arch == TINY


def test_static_model_keep_counts_are_the_plan_patches():
    """The top-k of each stage: every token out but CLS (SPViT: and its package tokens)."""
    plan = plan_of("dynamicvit", (3, 6, 9), (0.7, 0.49, 0.343))
    assert get_method("dynamicvit").build(TINY, plan).keep_counts == [137, 96, 67]
    plan = plan_of("spvit", (3, 6, 9), (0.617, 0.369, 0.137))
    assert [s.tokens_out for s in plan.selectors] == [122, 75, 30]  # 1 + kept + packages
    assert get_method("spvit").build(TINY, plan).keep_counts == [120, 72, 26]


@pytest.mark.parametrize("method", ["dynamicvit", "spvit", "evit", "avit"])
def test_a_ratio_per_location_or_nothing(method):
    """A schedule with fewer ratios than locations is refused, never cut short."""
    with pytest.raises(ValueError, match="zip"):
        plan_of(method, (3, 6), (0.5,))
