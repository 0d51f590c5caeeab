"""Tables for the latency tests.

``measure_table``: a REAL latency table, measured here with onnxruntime by the
product's own profile sweep (``edgeprune.profiling.sweep.measure`` on the ``cpu`` device: one
DeiT block chain at a handful of token counts, the embedding, the head and the
method's selector at the counts the sweep picks; few runs: measured, but coarse).
``synthetic_table``: a made-up table, marked ``measured: false``, for pure-math tests.
``scaled_table``: a table with every time × a factor (a machine that seems faster or
slower than it is).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edgeprune.core.arch import Arch, get_arch
from edgeprune.latency.table import Curve, EndToEnd, LatencyTable, Point
from edgeprune.profiles.devices import get_device
from edgeprune.profiling.sweep import ProfileRequest, measure
from edgeprune.runtimes.timing import TimingPolicy


def measure_table(
    arch: Arch | str = "deit_tiny",
    method: str = "dynamicvit",
    block_tokens: tuple[int, ...] = (1, 25, 50, 75, 100, 125, 150, 175, 197),
    threads: int = 1,
    rounds: int = 20,
    batch: int = 1,
    chain: int = 4,
) -> LatencyTable:
    """The sweep ``edgeprune profile --device cpu --grid BLOCK_TOKENS --no-halves
    --no-e2e --check-points 0`` runs, with one timed run per piece per round."""
    req = ProfileRequest(
        device=get_device("cpu"),
        arch=get_arch(arch) if isinstance(arch, str) else arch,
        method=method,
        threads=threads,
        batch=batch,
        grid=list(block_tokens),
        policy=TimingPolicy.fixed(rounds, warmup=2),
        check_points=0,
        halves=False,
        rounds=rounds,
        chain=chain,
        e2e=False,
    )
    return measure(req)


def synthetic_table(
    arch: str = "deit_tiny",
    method: str | None = "dynamicvit",
    split: bool = False,
    e2e: tuple[float, float] | None = None,
) -> LatencyTable:
    """Made-up numbers (measured: false): a block that costs a + b·n + c·n² ms; with
    ``e2e`` = (offset, scale), an end-to-end correction as a profile's anchors give."""
    a = get_arch(arch)
    ns = (1, 50, 100, 150, 197)

    def cv(a0: float, b: float, c2: float) -> Curve:
        ys = tuple(a0 + b * n + c2 * n * n for n in ns)
        return Curve(ns, ys, tuple(1.1 * y for y in ys))

    return LatencyTable(
        device={"name": "synthetic", "runtime": "none", "threads": 1},
        arch=a,
        method=method,
        batch=1,
        date="synthetic",
        measured=False,
        block=cv(0.05, 0.004, 1e-5),
        embed=Point(0.3, 0.33),
        head=Point(0.05, 0.06),
        attn=cv(0.03, 0.0015, 1e-5) if split else None,
        mlp=cv(0.02, 0.0025, 0.0) if split else None,
        selectors={method: cv(0.02, 0.001, 0.0)} if method else {},
        e2e=EndToEnd((), *e2e) if e2e else None,
        extra={"note": "synthetic numbers for tests, not a measurement"},
    )


def scaled_table(t: LatencyTable, factor: float) -> LatencyTable:
    """``t`` with every time (curves, points, the end-to-end offset) × ``factor``."""

    def c(cv: Curve | None) -> Curve | None:
        if cv is None:
            return None
        return Curve(
            cv.tokens, *(tuple(v * factor for v in ys) for ys in (cv.median_ms, cv.p90_ms))
        )

    def p(pt: Point) -> Point:
        return Point(pt.median_ms * factor, pt.p90_ms * factor)

    e2e = replace(t.e2e, offset_ms=t.e2e.offset_ms * factor) if t.e2e else None
    return replace(
        t,
        block=c(t.block),
        attn=c(t.attn),
        mlp=c(t.mlp),
        embed=p(t.embed),
        head=p(t.head),
        selectors={k: c(cv) for k, cv in t.selectors.items()},
        e2e=e2e,
    )


def rng_ratios(seed: int, n: int = 3) -> tuple[float, ...]:
    r = np.sort(np.random.default_rng(seed).uniform(0.1, 1.0, n))[::-1]
    return tuple(round(float(x), 3) for x in r)
