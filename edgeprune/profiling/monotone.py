"""Latency curves that survive a noisy machine: the expected shape, and the noise seen.

A block's latency does not fall when it is given more tokens. A point of a measured
curve that breaks that shape by more than the noise is a burst of load on the
machine, not a property of the model: the sweep re-times such points instead of
keeping them (``shape_breaks``), and the curve finally stored is the monotone
(isotonic, least-squares) fit of the medians (``isotonic``).

The noise is the spread of a point's repeated passes: (max − min) / median of the
per-pass medians, one number per point (``pass_spread``); ``noise_summary`` gives the
median and p90 over the points, which ``profile`` and ``validate-profile`` report.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from edgeprune.runtimes.timing import percentile


def isotonic(y: Sequence[float], w: Sequence[float] | None = None) -> list[float]:
    """The non-decreasing sequence closest to ``y`` in weighted least squares (pool
    adjacent violators)."""
    if w is None:
        w = [1.0] * len(y)
    if len(w) != len(y):
        raise ValueError("isotonic: y and w differ in length")
    # blocks of (mean, weight, count), merged while a block is below its predecessor
    blocks: list[list[float]] = []
    for v, wt in zip(y, w, strict=True):
        blocks.append([float(v), float(wt), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks[-1]
            tw = w1 + w2
            blocks[-1] = [(m1 * w1 + m2 * w2) / tw if tw else (m1 + m2) / 2, tw, c1 + c2]
    out: list[float] = []
    for m, _wt, c in blocks:
        out.extend([m] * int(c))
    return out


def shape_breaks(values: Sequence[float], tolerance: float) -> list[int]:
    """Indices of the points to re-time: slower by more than ``tolerance`` (relative)
    than some point with more tokens. Load on a machine only ever adds time, so of two
    points that break the order, the slower one is the suspect."""
    out, low = [], float("inf")
    for i in range(len(values) - 1, -1, -1):
        if values[i] > (1 + tolerance) * low:
            out.append(i)
        low = min(low, values[i])
    return sorted(out)


def pass_spread(pass_medians: Sequence[float]) -> float:
    """Relative spread of one point's repeated passes: (max − min) / median."""
    if len(pass_medians) < 2:
        return 0.0
    med = statistics.median(pass_medians)
    return (max(pass_medians) - min(pass_medians)) / med if med > 0 else 0.0


def noise_summary(spreads: Sequence[float]) -> dict:
    """Median and p90 of the per-point spreads, and how many points were measured."""

    if not spreads:
        return {"points": 0, "median_spread": 0.0, "p90_spread": 0.0}
    s = sorted(spreads)
    return {
        "points": len(s),
        "median_spread": statistics.median(s),
        "p90_spread": percentile(s, 90),
    }
