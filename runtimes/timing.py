"""Timing statistics and the adaptive timing loop every runner shares: a median with its
distribution-free 95 % confidence interval, and a loop that times until that interval is
within a tolerance (or a time limit passes)."""

from __future__ import annotations

import functools
import math
import numbers
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Annotated

from pydantic import ConfigDict, Field, field_validator

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.schema import NonNegative, Strict, Threads, non_finite_in, validate

if TYPE_CHECKING:
    import numpy as np


CONFIDENCE = 0.95  # of the median's interval
DEFAULT_TOLERANCE = 0.02  # the interval's half-width, as a share of the median (±2 %)


@dataclass(frozen=True, kw_only=True)
class TimingPolicy:
    """How long to time one thing: warm-up runs, then timed runs until ``min_runs`` and
    ``min_time_s`` are reached and the median's 95 % interval is within ``tolerance``
    (its half-width as a share of the median; None: no such condition), stopping anyway
    at ``max_runs`` or ``max_time_s``. A fixed count: ``TimingPolicy.fixed(n)`` (the
    interval is still reported, and judged against ``tolerance``)."""

    warmup: int = 3
    min_runs: int = 10
    max_runs: int = 200
    min_time_s: float = 0.25
    max_time_s: float = 1.5
    tolerance: float | None = DEFAULT_TOLERANCE

    @classmethod
    def fixed(cls, runs: int, warmup: int = 3) -> TimingPolicy:
        return cls(warmup=warmup, min_runs=runs, max_runs=runs, min_time_s=0.0, max_time_s=1e9)

    @property
    def is_fixed(self) -> bool:
        return self.min_runs == self.max_runs


# bench: one artifact, worth seconds of timing when the machine is noisy
BENCH_POLICY = TimingPolicy(min_runs=20, min_time_s=1.0, max_runs=1_000_000, max_time_s=10.0)


def policy_for(
    runs: int | None,
    default: TimingPolicy = BENCH_POLICY,
    *,
    tolerance: float | None = None,
    max_time_s: float | None = None,
) -> TimingPolicy:
    """``--runs N``: exactly N timed runs; None: ``default`` (adaptive). ``tolerance``
    (a share of the median, e.g. 0.02) and ``max_time_s`` replace the default's."""
    if runs is not None and runs < 1:
        raise EdgepruneError(f"--runs {runs} must be at least 1")
    if tolerance is not None and not 0 < tolerance < 1:
        raise EdgepruneError(f"--tolerance {tolerance * 100:g} % must be above 0 and below 100")
    if max_time_s is not None and not max_time_s > 0:
        raise EdgepruneError(f"--max-time {max_time_s:g} must be above 0 seconds")
    policy = TimingPolicy.fixed(runs, default.warmup) if runs else default
    if tolerance is not None:
        policy = replace(policy, tolerance=tolerance)
    if max_time_s is not None and not runs:
        min_time = min(policy.min_time_s, max_time_s)
        policy = replace(policy, max_time_s=max_time_s, min_time_s=min_time)
    return policy


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """The ranks (1-based) ``(j, n + 1 - j)`` of the order statistics that bound the
    distribution-free confidence interval of the median of ``n`` samples: the largest
    ``j`` with 2 P(B ≤ j − 1) ≤ 1 − ``confidence``, B ~ Binomial(n, ½) (the interval
    [x₍ⱼ₎, x₍ₙ₊₁₋ⱼ₎] holds the true median with probability 1 − 2 P(B ≤ j − 1), whatever
    the distribution). None when ``n`` is too small for any (n < 6 at 95 %).

    P(B ≤ k) is summed in log space from 10 standard deviations below the mean, where the
    terms left out are below 1e-22: O(√n) steps."""
    if n < 1:
        return None
    half_alpha = (1.0 - confidence) / 2.0
    k = max(0, math.floor(n / 2 - 5 * math.sqrt(n)))
    log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    cumulative = 0.0
    while k <= n:
        p = math.exp(log_pmf)
        if cumulative + p > half_alpha:
            break
        cumulative += p
        if k < n:
            log_pmf += math.log(n - k) - math.log(k + 1)
        k += 1
    # P(B ≤ k - 1) ≤ alpha/2 < P(B ≤ k): j - 1 = k - 1
    return (k, n + 1 - k) if k >= 1 else None


def median_ci(sorted_values: Sequence[float], confidence: float = CONFIDENCE):
    """(low, high): the distribution-free interval of the median of already sorted
    samples (``median_ci_ranks``); None when there are too few."""
    ranks = median_ci_ranks(len(sorted_values), confidence)
    if ranks is None:
        return None
    return sorted_values[ranks[0] - 1], sorted_values[ranks[1] - 1]


def ci_halfwidth(sorted_values: Sequence[float]) -> float | None:
    """The 95 % interval's half-width as a share of the median; None: too few samples."""
    ci = median_ci(sorted_values)
    med = statistics.median(sorted_values) if sorted_values else 0.0
    if ci is None or med <= 0:
        return None
    return (ci[1] - ci[0]) / 2.0 / med


@dataclass(kw_only=True)
class Timing:
    """Latency of one artifact or piece, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    runs: int
    # the median's distribution-free 95 % interval, its half-width as a share of the
    # median, the tolerance it was held to and whether it got within (None: unknown, e.g.
    # too few runs, or a number combined from several timings)
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    ci_halfwidth: float | None = None
    tolerance: float | None = None
    converged: bool | None = None
    threads: int | None = None
    runtime: str = ""
    runtime_version: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A timing is never negative, NaN or out of order, whoever built it (a runner's
        samples, a runtime's printed summary, a remote edgeprune's JSON, a resume file):
        one line instead of a ``"median_ms": -2.35`` or a bare ``NaN`` written out."""
        problem = timing_problem(self)
        if problem:
            by = f"{self.runtime} " if self.runtime else ""
            raise EdgepruneError(f"the {by}runner reported an impossible timing: {problem}")

    @classmethod
    def from_samples(
        cls, samples_ms: list[float], *, tolerance: float | None = DEFAULT_TOLERANCE, **meta
    ) -> Timing:
        if not samples_ms:
            raise ValueError("no timing samples")
        runtime = meta.get("runtime")
        check_samples(samples_ms, f"the {runtime} runner" if runtime else "the runner")
        s = sorted(samples_ms)
        ci = median_ci(s)
        t = cls(
            median_ms=statistics.median(s),
            p90_ms=percentile(s, 90),
            min_ms=s[0],
            max_ms=s[-1],
            runs=len(s),
            ci_low_ms=ci[0] if ci else None,
            ci_high_ms=ci[1] if ci else None,
            ci_halfwidth=ci_halfwidth(s),
            **meta,
        )
        return t.judged(tolerance)

    def judged(self, tolerance: float | None) -> Timing:
        """This timing held to ``tolerance`` (a share of the median): ``converged`` says
        whether its interval's half-width is within it (False with too few runs for an
        interval; None with no tolerance)."""
        if tolerance is None:
            return replace(self, tolerance=None, converged=None)
        ok = self.ci_halfwidth is not None and self.ci_halfwidth <= tolerance
        return replace(self, tolerance=tolerance, converged=ok)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, data: object, what: str, hint: str | None = None) -> Timing:
        """A Timing from its JSON form (``to_dict``: what ``bench --json`` prints, a remote
        edgeprune's answer), checked by ``TimingFile``: an unknown key, a wrong type, a
        negative or non-finite time is one line ``<what>: <field>: <problem>``."""
        v = validate(TimingFile, data, what, hint)
        try:
            return cls(**{k: getattr(v, k) for k in TimingFile.model_fields})
        except EdgepruneError as e:  # out of order: say whose timing it was
            raise EdgepruneError(f"{what}: {e.message.split(': ', 1)[-1]}", hint) from None


class TimingFile(Strict):
    """The JSON form of a :class:`Timing` (``Timing.to_dict``). Unknown keys are refused:
    a key this version does not know means the writer is another edgeprune, whose
    numbers may not mean the same."""

    model_config = ConfigDict(extra="forbid")

    median_ms: NonNegative  # ms, finite
    p90_ms: NonNegative
    min_ms: NonNegative
    max_ms: NonNegative
    runs: Annotated[int, Field(ge=1, le=10**12)]
    ci_low_ms: NonNegative | None = None
    ci_high_ms: NonNegative | None = None
    ci_halfwidth: NonNegative | None = None
    tolerance: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    converged: bool | None = None
    threads: Threads | None = None
    runtime: Annotated[str, Field(max_length=200)] = ""
    runtime_version: Annotated[str, Field(max_length=200)] = ""
    extra: dict = {}

    @field_validator("extra")
    @classmethod
    def _finite(cls, extra: dict) -> dict:
        bad = non_finite_in(extra)
        if bad is not None:
            raise ValueError(f"{bad} is not a finite number")
        return extra


def _is_ms(x: object) -> bool:
    """A time in ms: a real number (numpy's too), not a bool, finite and ≥ 0."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def timing_problem(t: Timing) -> str | None:
    """What makes ``t`` impossible (a time negative, NaN or infinite; no runs; min,
    median, p90 and max out of order), or None."""
    for name in ("median_ms", "p90_ms", "min_ms", "max_ms"):
        if not _is_ms(getattr(t, name)):
            return f"{name} {getattr(t, name)!r} (times are finite and ≥ 0)"
    for name in ("ci_low_ms", "ci_high_ms", "ci_halfwidth"):
        if getattr(t, name) is not None and not _is_ms(getattr(t, name)):
            return f"{name} {getattr(t, name)!r} (finite and ≥ 0, or none)"
    if not isinstance(t.runs, numbers.Integral) or isinstance(t.runs, bool) or t.runs < 1:
        return f"runs {t.runs!r} (at least 1)"
    slack = 1e-9 * t.max_ms  # percentile interpolation may round by an ulp
    if not t.min_ms - slack <= t.median_ms <= t.max_ms + slack:
        return f"median_ms {t.median_ms:g} outside min_ms {t.min_ms:g} … max_ms {t.max_ms:g}"
    if not t.min_ms - slack <= t.p90_ms <= t.max_ms + slack:
        return f"p90_ms {t.p90_ms:g} outside min_ms {t.min_ms:g} … max_ms {t.max_ms:g}"
    return None


def parse_ms(text: str, what: str) -> float:
    """A time in ms as ``what`` (a runtime's own tool) printed it: a finite number ≥ 0,
    else one line (``EdgepruneError``): "1.2.3", "-2.35" or "nan" are never a time."""
    try:
        value = float(text)
    except ValueError:
        msg = f"{what} printed '{text[:40]}' where a time in ms was expected"
        raise EdgepruneError(msg) from None
    if not _is_ms(value):
        raise EdgepruneError(f"{what} printed a time of {text[:40]} ms (negative or not finite)")
    return value


def check_samples(samples_ms: Sequence[float], what: str) -> None:
    """Every sample a finite number ≥ 0 (ms), else one line naming ``what`` timed them."""
    for x in samples_ms:
        if not _is_ms(x):
            raise EdgepruneError(
                f"{what} reported a time of {x!r} ms: times are finite and ≥ 0",
                "the runtime's output is corrupt or its clock misbehaved",
            )


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def within_tolerance(samples_ms: Sequence[float], tolerance: float | None) -> bool:
    """Whether the median's 95 % interval is within ``tolerance`` (None: always)."""
    if tolerance is None:
        return True
    hw = ci_halfwidth(sorted(samples_ms))
    return hw is not None and hw <= tolerance


def time_callable(fn: Callable[[], object], policy: TimingPolicy) -> list[float]:
    """Warm up, then time ``fn`` per ``policy``; returns the samples in ms.

    Past ``min_runs`` and ``min_time_s`` the interval is checked every ~5 % more runs
    (one sort each time: about 20 sorts of the final sample list in all, outside the
    timed calls)."""
    for _ in range(policy.warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    next_check = policy.min_runs
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        spent = time.perf_counter() - start
        n = len(samples)
        if n >= policy.max_runs or spent >= policy.max_time_s:
            break
        if n >= next_check and spent >= policy.min_time_s:
            if within_tolerance(samples, policy.tolerance):
                break
            next_check = n + max(1, n // 20)
    return samples


def interleave_bursts(
    fns: Sequence[Callable[[], object]],
    rounds: int = 30,
    warmup: int = 3,
    burst: int = 1,
    max_seconds: float | None = None,
    min_rounds: int = 10,
    *,
    tolerance: float | None = None,
    max_rounds: int | None = None,
) -> list[list[list[float]]]:
    """Run every fn ``burst`` times in a row per round, the order rotating each round
    (A B C, B C A, …), so the machine's drift hits all of them alike: per fn, per round,
    the burst's times in ms. The first run of a burst follows a different fn; the others
    follow the fn itself. ``max_seconds`` stops early, after at least ``min_rounds``
    rounds. With ``tolerance``, ``rounds`` is a minimum: rounds go on, up to
    ``max_rounds`` (4 × ``rounds``) or ``max_seconds``, until every fn's median has its
    95 % interval within ``tolerance`` (the runs kept: a burst's first is dropped)."""
    if burst < 1:
        raise ValueError("burst must be at least 1")
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[list[float]]] = [[] for _ in fns]
    k, skip = len(fns), (0 if burst == 1 else 1)
    last = rounds if tolerance is None else max(rounds, max_rounds or 4 * rounds)
    start = time.perf_counter()
    for r in range(last):
        if r >= rounds and all(
            within_tolerance([t for runs in per_fn for t in runs[skip:]], tolerance)
            for per_fn in times
        ):
            break
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
    *,
    tolerance: float | None = None,
) -> list[list[float]]:
    """``interleave_bursts`` flattened: per-fn samples in ms (with ``tolerance``: as many
    rounds as its interval needs, see ``interleave_bursts``).

    With ``burst`` > 1 the first run of each burst is discarded: what is kept is the
    steady state that a model running back to back sees (as ``bench`` and a deployment
    do), not the cold start right after a different model evicted its weights."""
    bursts = interleave_bursts(
        fns, rounds, warmup, burst, max_seconds, min_rounds, tolerance=tolerance
    )
    skip = 0 if burst == 1 else 1
    return [[t for runs in per_fn for t in runs[skip:]] for per_fn in bursts]


def time_interleaved(
    runners: Sequence,
    inputs: Sequence[np.ndarray],
    rounds: int = 30,
    warmup: int = 3,
    burst: int = 1,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    max_seconds: float | None = 120.0,
) -> list[Timing]:
    """Time ``runners[i].run(inputs[i])`` (loaded runners, see ``runtimes.base``) with
    ``interleave_samples``, at least ``rounds`` rounds and more until every median's
    interval is within ``tolerance`` (at most 4 × ``rounds`` or ``max_seconds``): one
    Timing each, with its interval, judged against ``tolerance``, and its
    ``extra["spread"]`` the noise seen (see ``spread``)."""
    fns = [lambda r=r, x=x: r.run(x) for r, x in zip(runners, inputs, strict=True)]
    samples = interleave_samples(
        fns, rounds, warmup, burst, max_seconds, min_rounds=rounds, tolerance=tolerance
    )
    return [
        Timing.from_samples(s, tolerance=tolerance, extra={"spread": spread(s)}) for s in samples
    ]


def spread(samples_ms: Sequence[float]) -> float:
    """The noise of repeated runs: (p90 − p10) / median."""
    s = sorted(samples_ms)
    med = statistics.median(s)
    return (percentile(s, 90) - percentile(s, 10)) / med if med > 0 else 0.0
