"""The budget search against exhaustive enumeration, on random monotone latency tables.

Everything the search is compared with is computed here, by independent code: the token
counts of a schedule from the methods' published rules (DynamicViT keeps int(P·ρ)
patches, ρ cumulative; EViT keeps ceil(rate·(N−1)) tokens plus one fused token), the
predicted latency by a plain loop over the blocks with a hand-written linear
interpolation, the objective (tokens kept: Σ_blocks (attn + mlp) / 2; or the additive
sensitivity model), and the best schedule meeting the target by trying every one.

On a 16-patch model (64×64 images) the search's 0.02 grid reaches every token count, so
its answer must EQUAL the best of all schedules. On DeiT-T (196 patches) it must be at
least as good as the best schedule on its own 0.02 grid and on the quarter-step
neighbourhood it says it refines (its stated resolution), and no better than the best
of all token counts.

Targets fall halfway between two distinct enumerated latencies, so that no schedule
sits on the boundary and float rounding cannot decide the answer.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeprune.budget.search import Sensitivity, UnreachableTarget, search
from edgeprune.core.arch import Arch, get_arch
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import Curve, EndToEnd, LatencyTable, Point
from tests.conftest import FUZZ_CASES

# examples per test: the free search costs ~0.1 s a table here (the product's own time),
# so the slower ones run a share of FUZZ_CASES (a few hundred tables in all at CI size)
SHARE = {"small": max(1, FUZZ_CASES // 2), "slow": max(1, FUZZ_CASES // 4)}
SMALL = Arch("ref_small", embed_dim=32, num_heads=2, depth=4, img_size=64, num_classes=10)
FUZZ = settings(
    max_examples=FUZZ_CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
GRID_STEP, FINE = 0.02, 0.005  # the free search's grid and its refinement step


# ---- the latency model, by hand -------------------------------------------------------
def lin(xs, ys, x: float) -> float:
    """Linear interpolation between knots (x inside them, as every test table covers
    1..num_tokens)."""
    assert xs[0] <= x <= xs[-1]
    for i in range(len(xs) - 1):
        if x <= xs[i + 1]:
            x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise AssertionError("unreachable")


def held(xs, ys, x: float) -> float:
    """A sensitivity curve: linear between its points, constant past its ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    return lin(xs, ys, x)


class Hand:
    """A table's numbers and the latency of token counts, computed here."""

    def __init__(self, t: LatencyTable, method: str):
        self.t, self.method = t, method
        e2e = t.e2e or EndToEnd((), 0.0, 1.0)
        self.offset, self.scale = e2e.offset_ms, e2e.scale

    def curve(self, c: Curve, n: int) -> float:
        return max(0.0, lin(c.tokens, c.median_ms, n))

    def latency(self, attn, mlp, sel_in) -> float:
        pieces = self.t.embed.median_ms + self.t.head.median_ms
        for a, m in zip(attn, mlp, strict=True):
            if a == m:
                pieces += self.curve(self.t.block, a)
            else:
                pieces += self.curve(self.t.attn, a) + self.curve(self.t.mlp, m)
        for n in sel_in:
            pieces += self.curve(self.t.selectors[self.method], n)
        return self.offset + self.scale * pieces


# ---- token counts, by hand ------------------------------------------------------------
def dyvit_tokens(arch: Arch, locs, kept):
    """(attn, mlp, selector inputs) of DynamicViT keeping ``kept`` patches at ``locs``."""
    n, attn, sel = arch.num_tokens, [], []
    for b in range(arch.depth):
        if b in locs:
            sel.append(n)
            n = kept[locs.index(b)] + 1
        attn.append(n)
    return attn, attn, sel


def evit_tokens(arch: Arch, locs, kept):
    """EViT keeping ``kept`` non-CLS tokens at ``locs`` (mid-block), plus a fused one."""
    n, attn, mlp, sel = arch.num_tokens, [], [], []
    for b in range(arch.depth):
        attn.append(n)
        if b in locs:
            sel.append(n)
            n = kept[locs.index(b)] + 2
        mlp.append(n)
    return attn, mlp, sel


def kept_tokens(attn, mlp) -> float:
    return sum(a + m for a, m in zip(attn, mlp, strict=True)) / 2


def dyvit_counts(arch: Arch, ratios) -> tuple[int, ...]:
    return tuple(int(arch.num_patches * r) for r in ratios)


def all_dyvit_counts(arch: Arch):
    """Every DynamicViT schedule of two stages: 1 ≤ k2 ≤ k1 ≤ patches."""
    p = arch.num_patches
    return [(k1, k2) for k1 in range(1, p + 1) for k2 in range(1, k1 + 1)]


def all_evit_counts(arch: Arch):
    """Every EViT schedule of two stages at blocks 1, 2: each stage prunes (keeps fewer
    than the N − 1 non-CLS tokens entering it)."""
    n0 = arch.num_tokens
    return [(k1, k2) for k1 in range(1, n0 - 1) for k2 in range(1, k1 + 2 - 1)]


# ---- random monotone tables -----------------------------------------------------------
@st.composite
def monotone_curve(draw, top: int) -> Curve:
    inner = draw(st.lists(st.integers(2, top - 1), max_size=4, unique=True))
    xs = (1, *sorted(inner), top)
    y = draw(st.floats(0.0, 1.0))
    ys = [y]
    for _ in xs[1:]:
        y += draw(st.floats(1e-3, 1.0))
        ys.append(y)
    return Curve(xs, tuple(ys), tuple(ys))


@st.composite
def tables(draw, arch: Arch, method: str) -> LatencyTable:
    top = arch.num_tokens
    e2e = draw(
        st.one_of(st.none(), st.tuples(st.floats(0.0, 0.5), st.floats(0.5, 2.0)).map(_end_to_end))
    )
    split = method == "evit"
    return LatencyTable(
        device={"name": "random", "runtime": "none", "threads": 1},
        arch=arch,
        method=method,
        batch=1,
        date="random",
        measured=False,
        block=draw(monotone_curve(top)),
        embed=Point(e := draw(st.floats(0.0, 1.0)), e),
        head=Point(h := draw(st.floats(0.0, 1.0)), h),
        attn=draw(monotone_curve(top)) if split else None,
        mlp=draw(monotone_curve(top)) if split else None,
        selectors={method: draw(monotone_curve(top))},
        e2e=e2e,
    )


def _end_to_end(pair) -> EndToEnd:
    return EndToEnd((), *pair)


def aim_between(latencies: list[float], u: float) -> float:
    """A target halfway between two distinct latencies (the u-th gap), or above all."""
    distinct: list[float] = []
    for v in sorted(latencies):
        if not distinct or v - distinct[-1] > 1e-9:
            distinct.append(v)
    j = min(int(u * len(distinct)), len(distinct) - 1)
    if j == len(distinct) - 1:
        return distinct[-1] + 1.0
    return (distinct[j] + distinct[j + 1]) / 2


def enumerate_small(hand: Hand, arch, locs, method):
    """Every schedule of ``method`` (and the dense model): (counts, latency, objective)."""
    tokens = dyvit_tokens if method == "dynamicvit" else evit_tokens
    counts = all_dyvit_counts(arch) if method == "dynamicvit" else all_evit_counts(arch)
    out = []
    for k in counts:
        attn, mlp, sel = tokens(arch, locs, k)
        out.append((k, hand.latency(attn, mlp, sel), kept_tokens(attn, mlp)))
    dense = [arch.num_tokens] * arch.depth
    out.append(("dense", hand.latency(dense, dense, []), kept_tokens(dense, dense)))
    return out


def search_args(u_margin: float, u_scale: float) -> tuple[float, float]:
    """A margin in [0, 0.3] and a re-anchoring scale in [0.5, 2]."""
    return round(0.3 * u_margin, 3), 0.5 + 1.5 * u_scale


def check_chosen(result, hand: Hand, arch, locs, method, aim: float) -> float:
    """The chosen schedule's token counts and latency by hand: meets the aim; the
    search's own figures for it agree. Returns its objective (tokens kept)."""
    ch = result.chosen
    if result.status == "dense":
        dense = [arch.num_tokens] * arch.depth
        lat, kept = hand.latency(dense, dense, []), kept_tokens(dense, dense)
    else:
        if method == "dynamicvit":
            attn, mlp, sel = dyvit_tokens(arch, locs, dyvit_counts(arch, ch.keep_ratios))
        else:
            k, n = [], arch.num_tokens
            for r in ch.keep_ratios:
                k.append(math.ceil(r * (n - 1)))
                n = k[-1] + 2
            attn, mlp, sel = evit_tokens(arch, locs, k)
        lat, kept = hand.latency(attn, mlp, sel), kept_tokens(attn, mlp)
        assert (tuple(attn), tuple(mlp)) == (ch.plan.attn_tokens, ch.plan.mlp_tokens)
    assert lat <= aim
    assert ch.predicted_ms == pytest.approx(lat, rel=1e-9, abs=1e-12)
    assert ch.kept_tokens == kept
    return kept


def run_small(table, method, u, u_margin, u_scale):
    """Search the 16-patch model at blocks 1, 2; assert the enumeration's best."""
    arch, locs = SMALL, (1, 2)
    hand = Hand(table, method)
    every = enumerate_small(hand, arch, locs, method)
    margin, scale = search_args(u_margin, u_scale)
    aim = aim_or_unreachable([lat for _, lat, _ in every], u)  # in the table's own terms
    target = aim * scale / (1 - margin)
    best = max((obj for _, lat, obj in every if lat <= aim), default=None)
    model = LatencyModel(table)
    if best is None:
        with pytest.raises(UnreachableTarget):
            search(model, target, method, "free", locs, margin=margin, scale=scale)
        return
    r = search(model, target, method, "free", locs, margin=margin, scale=scale)
    assert check_chosen(r, hand, arch, locs, method, aim) == best


@settings(FUZZ, max_examples=SHARE["small"])
@given(tables(SMALL, "dynamicvit"), st.floats(-0.2, 1.0), st.floats(0, 1), st.floats(0, 1))
def test_fuzz_budget_free_dynamicvit_equals_enumeration(table, u, u_margin, u_scale):
    run_small(table, "dynamicvit", u, u_margin, u_scale)


@settings(FUZZ, max_examples=SHARE["slow"])
@given(tables(SMALL, "evit"), st.floats(-0.2, 1.0), st.floats(0, 1), st.floats(0, 1))
def test_fuzz_budget_free_evit_equals_enumeration(table, u, u_margin, u_scale):
    """EViT: keep rates relative to each stage's input, mid-block (split attn/MLP)."""
    run_small(table, "evit", u, u_margin, u_scale)


def aim_or_unreachable(latencies, u):
    """u < 0: a target below every schedule (the search must refuse it)."""
    return min(latencies) / 2 if u < 0 else aim_between(latencies, u)


# ---- geometric: one ratio r on a 0.001 grid, [r, r²] ----------------------------------
@settings(FUZZ, max_examples=SHARE["small"])
@given(tables(SMALL, "dynamicvit"), st.floats(0.0, 1.0))
def test_fuzz_budget_geometric_equals_enumeration(table, u):
    arch, locs = SMALL, (1, 2)
    hand = Hand(table, "dynamicvit")
    rows = []
    for i in range(1, 1001):
        r = i / 1000
        k = dyvit_counts(arch, (r, round(r * r, 10)))
        if min(k) < 1:
            continue
        attn, mlp, sel = dyvit_tokens(arch, locs, k)
        rows.append((hand.latency(attn, mlp, sel), kept_tokens(attn, mlp)))
    dense = [arch.num_tokens] * arch.depth
    rows.append((hand.latency(dense, dense, []), kept_tokens(dense, dense)))
    aim = aim_between([lat for lat, _ in rows], u)
    best = max(obj for lat, obj in rows if lat <= aim)
    res = search(LatencyModel(table), aim, "dynamicvit", "geometric", locs)
    assert check_chosen(res, hand, arch, locs, "dynamicvit", aim) == best
    if res.status == "ok":
        r1, r2 = res.chosen.keep_ratios
        assert r2 == pytest.approx(r1 * r1, abs=1e-9) and round(r1 * 1000) == r1 * 1000


# ---- with a sensitivity file: the objective is the predicted accuracy ----------------
@st.composite
def sensitivities(draw, locs) -> Sensitivity:
    dense = draw(st.floats(10.0, 90.0))
    stages = {}
    for loc in locs:
        n = draw(st.integers(2, 4))
        xs = sorted(draw(st.lists(st.floats(0.05, 0.95), min_size=n - 1, max_size=n - 1)))
        xs = [x for i, x in enumerate(xs) if i == 0 or x - xs[i - 1] > 1e-3] + [1.0]
        drops = sorted((draw(st.floats(0.0, dense)) for _ in xs), reverse=True)
        drops[-1] = 0.0  # the curve reaches the dense accuracy at ratio 1
        stages[loc] = (tuple(xs), tuple(dense - d for d in drops))
    return Sensitivity(dense, stages)


def accuracy(sens: Sensitivity, locs, ratios) -> float:
    acc = sens.dense
    for loc, r in zip(locs, ratios, strict=True):
        xs, ys = sens.stages[loc]
        acc -= sens.dense - held(xs, ys, r)
    return max(acc, 0.0)


@settings(FUZZ, max_examples=SHARE["slow"])
@given(
    tables(SMALL, "dynamicvit"),
    sensitivities((1, 2)),
    st.floats(0.0, 1.0),
)
def test_fuzz_budget_free_with_sensitivity_within_its_grid(table, sens, u):
    """The best predicted accuracy on the search's 0.02 grid ≤ the search's answer ≤ the
    best over every token count (each at the top of its keep-ratio interval)."""
    arch, locs = SMALL, (1, 2)
    hand = Hand(table, "dynamicvit")
    lowest = [sens.stages[loc][0][0] for loc in locs]
    grid = [round(i * GRID_STEP, 6) for i in range(1, 51)]
    rows = []  # (latency, accuracy) on the grid, within the measured ratios
    for r1 in grid:
        for r2 in grid:
            k = dyvit_counts(arch, (r1, r2))
            if r2 > r1 or min(k) < 1 or r1 < lowest[0] - 1e-9 or r2 < lowest[1] - 1e-9:
                continue
            lat = hand.latency(*dyvit_tokens(arch, locs, k))
            rows.append((lat, accuracy(sens, locs, (r1, r2))))
    dense = [arch.num_tokens] * arch.depth
    dense_ms = hand.latency(dense, dense, [])
    aim = aim_between([lat for lat, _ in rows] + [dense_ms], u)
    if dense_ms <= aim:
        grid_best = sup = sens.dense
    else:
        grid_best = max((a for lat, a in rows if lat <= aim), default=None)
        if grid_best is None:  # nothing within the measured ratios meets it
            with pytest.raises(UnreachableTarget):
                search(LatencyModel(table), aim, "dynamicvit", "free", locs, sens)
            return
        sup = max(
            accuracy(sens, locs, [min(1.0, (k + 1) / arch.num_patches) for k in ks])
            for ks in all_dyvit_counts(arch)
            if hand.latency(*dyvit_tokens(arch, locs, ks)) <= aim
        )
    res = search(LatencyModel(table), aim, "dynamicvit", "free", locs, sens)
    ch = res.chosen
    assert grid_best - 1e-9 <= ch.accuracy <= sup + 1e-9
    if res.status == "ok":
        assert ch.accuracy == pytest.approx(accuracy(sens, locs, ch.keep_ratios), abs=1e-9)
        assert hand.latency(*dyvit_tokens(arch, locs, dyvit_counts(arch, ch.keep_ratios))) <= aim


# ---- DeiT-T: the search's stated resolution -------------------------------------------
DEIT_LOCS = (3, 6)


def deit_latencies(hand: Hand, arch: Arch):
    """Latency of every DynamicViT (k1, k2) at blocks 3, 6: per-count costs first."""
    block = {n: hand.curve(hand.t.block, n) for n in range(1, arch.num_tokens + 1)}
    sel = {n: hand.curve(hand.t.selectors["dynamicvit"], n) for n in range(1, 198)}
    fixed = hand.t.embed.median_ms + hand.t.head.median_ms + 3 * block[197] + sel[197]
    lat = {}
    for k1, k2 in all_dyvit_counts(arch):
        pieces = fixed + 3 * block[k1 + 1] + sel[k1 + 1] + 6 * block[k2 + 1]
        lat[(k1, k2)] = hand.offset + hand.scale * pieces
    return lat


def deit_objective(k) -> float:
    return 3 * 197 + 3 * (k[0] + 1) + 6 * (k[1] + 1)


def neighbourhood(ratios) -> list[tuple[float, float]]:
    """The search's refinement: ±4 quarter steps around a grid point, non-increasing."""
    around = [[round(r + j * FINE, 6) for j in range(-4, 5)] for r in ratios]
    return [(a, b) for a in around[0] for b in around[1] if 0 < b <= a <= 1]


@settings(FUZZ, max_examples=max(1, FUZZ_CASES // 8))
@given(tables(get_arch("deit_tiny"), "dynamicvit"), st.floats(0.0, 1.0))
def test_fuzz_budget_free_deit_within_its_resolution(table, u):
    arch = get_arch("deit_tiny")
    hand = Hand(table, "dynamicvit")
    lat = deit_latencies(hand, arch)
    dense = [197] * 12
    dense_ms = hand.latency(dense, dense, [])
    # the 0.02 grid, by hand; the target is met by one of its schedules (or dense)
    grid = [round(i * GRID_STEP, 6) for i in range(1, 51)]
    schedules = {}
    for r1 in grid:
        for r2 in grid:
            k = dyvit_counts(arch, (r1, r2))
            if r2 <= r1 and min(k) >= 1:
                schedules[(r1, r2)] = (deit_objective(k), lat[k])
    # halfway between two latencies of ANY token counts (the refinement reaches counts
    # off the grid), at or above the grid's fastest schedule
    fastest = min(v for _, v in schedules.values())
    aim = aim_between([v for v in [*lat.values(), dense_ms] if v >= fastest - 1e-9], u)
    res = search(LatencyModel(table), aim, "dynamicvit", "free", DEIT_LOCS)
    if dense_ms <= aim:
        assert res.status == "dense"
        return
    got = check_chosen(res, hand, arch, DEIT_LOCS, "dynamicvit", aim)
    best_all = max(deit_objective(k) for k, v in lat.items() if v <= aim)
    # the grid's best (objective, then lower latency) and its ties
    on_grid = {r: (o, v) for r, (o, v) in schedules.items() if v <= aim}
    top = max(o for o, _ in on_grid.values())
    fastest_top = min(v for o, v in on_grid.values() if o == top)
    ties = [r for r, (o, v) in on_grid.items() if o == top and v <= fastest_top + 1e-9]
    # whichever tie the search refined around, its answer is at least that good
    floor = min(
        max(
            deit_objective(dyvit_counts(arch, r))
            for r in neighbourhood(t)
            if min(dyvit_counts(arch, r)) >= 1 and lat[dyvit_counts(arch, r)] <= aim
        )
        for t in ties
    )
    assert top <= floor <= got <= best_all
