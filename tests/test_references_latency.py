"""The latency model against closed forms, computed by hand here.

Every curve of the table is sampled from a known polynomial ``a + b·n + c·n²`` at a few
token counts. Between two knots p < q the model's linear interpolation is the chord of
that polynomial, whose exact value needs no interpolation code:

    chord_pq(n) = a + b·n + c·((p + q)·n − p·q)        (its slope: b + c·(p + q))

(the chord of c·n² through p and q; past the last knot, the chord of the last two). A
quadratic with c ≠ 0 has a different chord on every segment, so an interpolation that
reads the wrong segment gives another number. Token counts per block are written out
from the methods' published rules (DynamicViT keeps int(196·ρ) patches, ρ cumulative;
EViT keeps ceil(rate·(N−1)) tokens and adds one fused token), not asked of the product.
"""

from __future__ import annotations

import pytest
import torch

from edgeprune.core.arch import get_arch
from edgeprune.core.source import resolve
from edgeprune.latency.model import LatencyModel, interp
from edgeprune.latency.table import Curve, EndToEnd, LatencyTable, Point

GRID = (1, 40, 80, 120, 160, 197)
# the quadratics (a, b, c) each curve is sampled from, in ms
BLOCK = (0.05, 0.004, 1e-5)
ATTN = (0.03, 0.0015, 2e-5)
MLP = (0.02, 0.0025, 4e-6)
SELECTOR = (0.02, 0.001, 3e-6)
EMBED, HEAD = 0.3, 0.05
# the split curves stop short of 197: the model extrapolates the last chord there
SPLIT_GRID = (20, 60, 100, 140, 180)


def poly(f: tuple[float, float, float], n: float) -> float:
    a, b, c = f
    return a + b * n + c * n * n


def segment(grid: tuple[int, ...], n: float) -> tuple[int, int]:
    """The two knots whose chord the interpolation must read at ``n``: the segment that
    holds n (the upper one at an inner knot), the first/last one outside the grid."""
    for p, q in zip(grid, grid[1:], strict=False):
        if n < q:
            return p, q
    return grid[-2], grid[-1]


def chord(f: tuple[float, float, float], grid: tuple[int, ...], n: float) -> float:
    a, b, c = f
    p, q = segment(grid, n)
    return a + b * n + c * ((p + q) * n - p * q)


def slope(f: tuple[float, float, float], grid: tuple[int, ...], n: float) -> float:
    p, q = segment(grid, n)
    return f[1] + f[2] * (p + q)


def curve(f, grid=GRID) -> Curve:
    ys = tuple(poly(f, n) for n in grid)
    return Curve(grid, ys, tuple(1.1 * y for y in ys))


def table(method: str = "dynamicvit", e2e: tuple[float, float] | None = None) -> LatencyTable:
    return LatencyTable(
        device={"name": "closed-form", "runtime": "none", "threads": 1},
        arch=get_arch("deit_tiny"),
        method=method,
        batch=1,
        date="closed form",
        measured=False,
        block=curve(BLOCK),
        embed=Point(EMBED, EMBED),
        head=Point(HEAD, HEAD),
        attn=curve(ATTN, SPLIT_GRID),
        mlp=curve(MLP, SPLIT_GRID),
        selectors={method: curve(SELECTOR)},
        e2e=EndToEnd((), *e2e) if e2e else None,
    )


# ---- one curve -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7.5, 25, 40, 50, 79.9, 99, 120, 141, 196, 197, 210, 260])
def test_curve_reads_the_chord_of_its_segment(n):
    c = curve(BLOCK)
    want = chord(BLOCK, GRID, n)
    assert c.at(n) == pytest.approx(want, rel=1e-12)
    assert float(interp(c, torch.tensor([n], dtype=torch.float64))[0]) == pytest.approx(
        want, rel=1e-12
    )
    if n in GRID:  # at a knot: the sampled value itself
        assert c.at(n) == pytest.approx(poly(BLOCK, n), rel=1e-12)


def test_inside_a_segment_the_chord_is_above_the_convex_curve():
    """The numbers differ per segment: what a wrong segment would be caught by."""
    n = 99
    right = chord(BLOCK, GRID, n)  # segment 80..120
    for p, q in [(40, 80), (120, 160)]:
        wrong = BLOCK[0] + BLOCK[1] * n + BLOCK[2] * ((p + q) * n - p * q)
        assert abs(wrong - right) > 1e-4
    assert right > poly(BLOCK, n)


def test_extrapolation_below_zero_is_clamped():
    c = Curve((100, 200), (1.0, 3.0), (1.0, 3.0))
    assert c.at(300) == pytest.approx(5.0)  # 1 + 2·(300 − 100)/100
    assert c.at(75) == pytest.approx(0.5)
    assert c.at(25) == 0.0  # 1 + 2·(25 − 100)/100 = −0.5, clamped
    assert float(interp(c, torch.tensor(25.0, dtype=torch.float64))) == 0.0


# ---- whole schedules -------------------------------------------------------------------
# DynamicViT ρ = (0.5, 0.25, 0.125) at blocks 3, 6, 9: int(196ρ) = 98, 49, 24 patches
DYVIT_TOKENS = (197,) * 3 + (99,) * 3 + (50,) * 3 + (25,) * 3
DYVIT_SELECTORS_IN = (197, 99, 50)


def dyvit_plan():
    plan = resolve("deit_tiny:dynamicvit@0.5").plan
    # geometric @0.5 is (0.5, 0.25, 0.125): the token counts the closed form uses
    assert plan.attn_tokens == plan.mlp_tokens == DYVIT_TOKENS
    assert tuple(s.tokens_in for s in plan.selectors) == DYVIT_SELECTORS_IN
    return plan


def dyvit_by_hand(offset: float = 0.0, scale: float = 1.0) -> float:
    pieces = EMBED + HEAD
    for n in DYVIT_TOKENS:
        pieces += chord(BLOCK, GRID, n)
    for n in DYVIT_SELECTORS_IN:
        pieces += chord(SELECTOR, GRID, n)
    return offset + scale * pieces


@pytest.mark.parametrize("e2e", [None, (0.4, 1.25)], ids=["pieces", "corrected"])
def test_dynamicvit_schedule_equals_the_closed_form(e2e):
    model = LatencyModel(table(e2e=e2e))
    offset, scale = e2e or (0.0, 1.0)
    p = model.predict(dyvit_plan())
    assert p.total_ms == pytest.approx(dyvit_by_hand(offset, scale), rel=1e-12)
    for got, n in zip(p.blocks_ms, DYVIT_TOKENS, strict=True):
        assert got == pytest.approx(scale * chord(BLOCK, GRID, n), rel=1e-12)
    for got, n in zip(p.selectors_ms, DYVIT_SELECTORS_IN, strict=True):
        assert got == pytest.approx(scale * chord(SELECTOR, GRID, n), rel=1e-12)
    assert p.embed_ms == pytest.approx(scale * EMBED) and p.overhead_ms == offset
    # the batch path (budget search, loss) gives the same number
    assert float(model.predict_many([dyvit_plan()])[0]) == pytest.approx(p.total_ms, rel=1e-12)


def test_dense_plan_is_twelve_blocks_at_197():
    p = LatencyModel(table()).predict(resolve("deit_tiny").plan)
    assert p.total_ms == pytest.approx(EMBED + HEAD + 12 * poly(BLOCK, 197), rel=1e-12)


# EViT rate 0.7 at blocks 3, 6, 9 (mid-block): ceil(0.7·196) = 138 kept + CLS + fused =
# 140; ceil(0.7·139) = 98 → 100; ceil(0.7·99) = 70 → 72
EVIT_ATTN = (197,) * 4 + (140,) * 3 + (100,) * 3 + (72,) * 2
EVIT_MLP = (197,) * 3 + (140,) * 3 + (100,) * 3 + (72,) * 3
EVIT_SELECTORS_IN = (197, 140, 100)


def test_evit_split_blocks_use_the_attn_and_mlp_chords():
    plan = resolve("deit_tiny:evit@0.7").plan
    assert plan.attn_tokens == EVIT_ATTN and plan.mlp_tokens == EVIT_MLP
    assert tuple(s.tokens_in for s in plan.selectors) == EVIT_SELECTORS_IN
    want_blocks = []
    for na, nm in zip(EVIT_ATTN, EVIT_MLP, strict=True):
        if na == nm:
            want_blocks.append(chord(BLOCK, GRID, na))
        else:  # 197 lies past SPLIT_GRID's end: the chord of 140..180 extended
            want_blocks.append(chord(ATTN, SPLIT_GRID, na) + chord(MLP, SPLIT_GRID, nm))
    sels = [chord(SELECTOR, GRID, n) for n in EVIT_SELECTORS_IN]
    p = LatencyModel(table("evit")).predict(plan)
    assert p.blocks_ms == pytest.approx(want_blocks, rel=1e-12)
    assert p.selectors_ms == pytest.approx(sels, rel=1e-12)
    assert p.total_ms == pytest.approx(EMBED + HEAD + sum(want_blocks) + sum(sels), rel=1e-12)


def test_gradient_in_the_token_counts_is_the_chord_slope():
    """The loss trains through ``predict_tokens``: its derivative per block is the slope
    of that block's segment (× the end-to-end scale)."""
    model = LatencyModel(table(e2e=(0.4, 1.25)))
    ns = [197.0, 150.0, 99.0, 61.5, 33.0, 12.0, 5.0, 100.0, 130.0, 79.0, 45.0, 2.0]
    attn = torch.tensor([ns], dtype=torch.float64, requires_grad=True)
    total = model.predict_tokens(attn)
    total.sum().backward()
    want = [1.25 * slope(BLOCK, GRID, n) for n in ns]
    assert attn.grad[0].tolist() == pytest.approx(want, rel=1e-12)
    by_hand = 0.4 + 1.25 * (EMBED + HEAD + sum(chord(BLOCK, GRID, n) for n in ns))
    assert float(total.detach()[0]) == pytest.approx(by_hand, rel=1e-12)
