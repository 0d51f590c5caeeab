"""Honest timing helpers for the benchmarks: warm-up, interleaved A/B pairs, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "p90": pct(xs, 90), "min": min(xs), "runs": len(xs)}


def interleave(
    fns: dict[str, Callable[[], object]],
    runs: int,
    warmup: int = 5,
    max_seconds: float | None = None,
    burst: int = 1,
) -> dict[str, list[float]]:
    """Run every fn once per round, rotating who goes first (A B C, B C A, ...).
    Returns per-fn lists of milliseconds, one entry per round.

    ``burst`` > 1: each fn runs that many times in a row per round and the last run is
    kept (the steady state of a model running back to back, as ``edgeprune bench`` and a
    deployment see it, rather than a cold start right after another model)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for i in range(runs):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            for _ in range(burst - 1):
                fns[n]()
            t0 = time.perf_counter()
            fns[n]()
            out[n].append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds and i >= 9:
            break
    return out


def pair_ratio(a: list[float], b: list[float]) -> dict:
    """Median and spread of a[i]/b[i] over interleaved rounds."""
    r = [x / y for x, y in zip(a, b, strict=True)]
    return {"median": statistics.median(r), "p10": pct(r, 10), "p90": pct(r, 90)}


IDEAL_SHARE_TARGET = 0.9  # issue #7: a pruned model should reach 90 % of its GFLOPs ratio


def share_of_ideal(speedup: float, gflops_ratio: float) -> float:
    """Measured speedup as a share of the ideal one: speedup / GFLOPs ratio (issue #7's
    criterion is >= 0.9)."""
    return speedup / gflops_ratio


def gain_share(speedup: float, gflops_ratio: float) -> float | None:
    """The saving as a share of the ideal saving: (speedup - 1) / (GFLOPs ratio - 1).
    Harsher than ``share_of_ideal``; None when the ratio is 1 (nothing to gain)."""
    return (speedup - 1) / (gflops_ratio - 1) if gflops_ratio > 1 else None
