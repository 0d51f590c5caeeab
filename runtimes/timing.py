"""Timing statistics and the adaptive timing loop every runner shares."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from edgeprune.core.errors import EdgepruneError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, kw_only=True)
class TimingPolicy:
    """How long to time one thing: warm-up runs, then timed runs until both
    ``min_runs`` and ``min_time_s`` are reached, stopping at ``max_runs`` or
    ``max_time_s``. A fixed count: ``TimingPolicy.fixed(n)``."""

    warmup: int = 3
    min_runs: int = 10
    max_runs: int = 200
    min_time_s: float = 0.25
    max_time_s: float = 1.5

    @classmethod
    def fixed(cls, runs: int, warmup: int = 3) -> TimingPolicy:
        return cls(warmup=warmup, min_runs=runs, max_runs=runs, min_time_s=0.0, max_time_s=1e9)


BENCH_POLICY = TimingPolicy(min_runs=20, min_time_s=1.0)


def policy_for(runs: int | None, default: TimingPolicy = BENCH_POLICY) -> TimingPolicy:
    """``--runs N``: exactly N timed runs; None: ``default`` (adaptive)."""
    if runs is not None and runs < 1:
        raise EdgepruneError(f"--runs {runs} must be at least 1")
    return TimingPolicy.fixed(runs) if runs else default


@dataclass(kw_only=True)
class Timing:
    """Latency of one artifact or piece, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    runs: int
    threads: int | None = None
    runtime: str = ""
    runtime_version: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_samples(cls, samples_ms: list[float], **meta) -> Timing:
        if not samples_ms:
            raise ValueError("no timing samples")
        s = sorted(samples_ms)
        return cls(
            median_ms=statistics.median(s),
            p90_ms=percentile(s, 90),
            min_ms=s[0],
            max_ms=s[-1],
            runs=len(s),
            **meta,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_callable(fn: Callable[[], object], policy: TimingPolicy) -> list[float]:
    """Warm up, then time ``fn`` per ``policy``; returns the samples in ms."""
    for _ in range(policy.warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        spent = time.perf_counter() - start
        n = len(samples)
        if n >= policy.max_runs or spent >= policy.max_time_s:
            break
        if n >= policy.min_runs and spent >= policy.min_time_s:
            break
    return samples


def interleave_bursts(
    fns: Sequence[Callable[[], object]],
    rounds: int = 30,
    warmup: int = 3,
    burst: int = 1,
    max_seconds: float | None = None,
    min_rounds: int = 10,
) -> list[list[list[float]]]:
    """Run every fn ``burst`` times in a row per round, the order rotating each round
    (A B C, B C A, …), so the machine's drift hits all of them alike: per fn, per round,
    the burst's times in ms. The first run of a burst follows a different fn; the others
    follow the fn itself. ``max_seconds`` stops early, after at least ``min_rounds``
    rounds."""
    if burst < 1:
        raise ValueError("burst must be at least 1")
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[list[float]]] = [[] for _ in fns]
    k = len(fns)
    start = time.perf_counter()
    for r in range(rounds):
        for j in range(k):
            i = (j + r) % k
            runs = []
            for _ in range(burst):
                t0 = time.perf_counter()
                fns[i]()
                runs.append((time.perf_counter() - t0) * 1e3)
            times[i].append(runs)
        late = max_seconds is not None and time.perf_counter() - start > max_seconds
        if late and r + 1 >= min_rounds:
            break
    return times


def interleave_samples(
    fns: Sequence[Callable[[], object]],
    rounds: int = 30,
    warmup: int = 3,
    burst: int = 1,
    max_seconds: float | None = None,
    min_rounds: int = 10,
) -> list[list[float]]:
    """``interleave_bursts`` flattened: per-fn samples in ms.

    With ``burst`` > 1 the first run of each burst is discarded: what is kept is the
    steady state that a model running back to back sees (as ``bench`` and a deployment
    do), not the cold start right after a different model evicted its weights."""
    bursts = interleave_bursts(fns, rounds, warmup, burst, max_seconds, min_rounds)
    skip = 0 if burst == 1 else 1
    return [[t for runs in per_fn for t in runs[skip:]] for per_fn in bursts]


def time_interleaved(
    runners: Sequence,
    inputs: Sequence[np.ndarray],
    rounds: int = 30,
    warmup: int = 3,
    burst: int = 1,
) -> list[Timing]:
    """Time ``runners[i].run(inputs[i])`` (loaded runners, see ``runtimes.base``) with
    ``interleave_samples``: one Timing each, its ``extra["spread"]`` the noise seen
    (see ``spread``)."""
    fns = [lambda r=r, x=x: r.run(x) for r, x in zip(runners, inputs, strict=True)]
    return [
        Timing.from_samples(t, extra={"spread": spread(t)})
        for t in interleave_samples(fns, rounds, warmup, burst)
    ]


def spread(samples_ms: Sequence[float]) -> float:
    """The noise of repeated runs: (p90 − p10) / median."""
    s = sorted(samples_ms)
    med = statistics.median(s)
    return (percentile(s, 90) - percentile(s, 10)) / med if med > 0 else 0.0
