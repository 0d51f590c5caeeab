"""The monotone latency curve and the noise measures (edgeprune.profiling.monotone)."""

import itertools
import random

import pytest

from edgeprune.profiling.monotone import isotonic, noise_summary, pass_spread, shape_breaks


def _sse(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def test_isotonic_keeps_a_monotone_curve():
    y = [1.0, 1.5, 1.5, 2.0, 4.0]
    assert isotonic(y) == y


def test_isotonic_pools_a_spike_and_is_least_squares():
    y = [4.5, 9.0, 4.5, 5.0]
    fit = isotonic(y)
    assert all(b >= a for a, b in itertools.pairwise(fit))
    assert fit == pytest.approx([4.5, 18.5 / 3, 18.5 / 3, 18.5 / 3])
    # no other non-decreasing sequence on a fine grid is closer
    rng = random.Random(0)
    for _ in range(2000):
        cand = sorted(rng.uniform(4, 9.5) for _ in y)
        assert _sse(fit, y) <= _sse(cand, y) + 1e-9


def test_isotonic_weighted():
    assert isotonic([2.0, 1.0], [3.0, 1.0]) == pytest.approx([1.75, 1.75])


def test_shape_breaks_finds_the_spike_only():
    tokens_ms = [4.0, 4.2, 4.5, 9.0, 4.6, 4.8, 5.0]
    assert shape_breaks(tokens_ms, 0.10) == [3]
    assert shape_breaks([1.0, 1.01, 1.0, 1.02], 0.05) == []


def test_spread_and_summary():
    assert pass_spread([10.0, 11.0, 9.0]) == pytest.approx(0.2)
    assert pass_spread([5.0]) == 0.0
    s = noise_summary([0.01, 0.02, 0.03, 0.5])
    assert s["points"] == 4 and s["median_spread"] == pytest.approx(0.025)
    assert s["p90_spread"] > 0.03


class _BurstyRunner:
    """The real onnxruntime runner, with an injected fault: the first ``passes`` times
    it times a piece at 32 tokens, a burst of load adds 50 ms (as a busy machine
    would). Nothing else is changed: every figure is a real measurement."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, passes: int):
        from edgeprune.core.backends.runner import get_runner

        self.inner = get_runner("onnxruntime", threads=1)
        self.threads = 1
        self.left = passes
        self.tokens = 0

    def version(self) -> str:
        return self.inner.version()

    def load(self, artifact) -> None:
        self.inner.load(artifact)
        shape = next(iter(self.inner.input_shapes().values()))
        self.tokens = shape[1] if len(shape) == 3 else 0

    def time(self, policy=None):
        from dataclasses import replace

        t = self.inner.time(policy)
        if self.tokens == 32 and self.left > 0:
            self.left -= 1
            return replace(
                t,
                median_ms=t.median_ms + 50,
                p90_ms=t.p90_ms + 50,
                min_ms=t.min_ms + 50,
                max_ms=t.max_ms + 50,
            )
        return t


def test_sweep_retimes_a_burst_and_stores_a_monotone_curve():
    from edgeprune.core.arch import get_arch
    from edgeprune.profiles.devices import get_device
    from edgeprune.profiling.sweep import ProfileRequest, measure
    from edgeprune.runtimes.timing import TimingPolicy

    req = ProfileRequest(
        device=get_device("cpu"), arch=get_arch("deit_tiny"), method=None, threads=1,
        grid=[1, 32, 197], policy=TimingPolicy.fixed(3, warmup=1), check_points=0,
        halves=False, rounds=3, chain=1, e2e=False,
    )  # fmt: skip
    # the burst hits all three passes of the first sweep: the median cannot hide it
    table = measure(req, runner=_BurstyRunner(passes=3))
    r = table.extra["retimed"]
    assert ["block", 32] in r["points"] and r["still_breaking"] == []
    b = table.block
    assert b.median_ms[1] < b.median_ms[2] < 50  # the re-timed figure, not the burst
    assert list(b.median_ms) == sorted(b.median_ms)
    assert table.extra["raw_median_ms"]["block"][1] == b.median_ms[1]
    n = table.extra["noise"]
    assert n["points"] >= 3 and n["shape_tolerance"] >= 0.03
    # without re-timing the burst stays in the raw figure and the fit pools it away
    req.retime = 0
    kept = measure(req, runner=_BurstyRunner(passes=3))
    assert kept.extra["retimed"]["count"] == 0
    assert kept.extra["raw_median_ms"]["block"][1] > 50
    assert kept.extra["retimed"]["still_breaking"] == [["block", 32]]
    assert list(kept.block.median_ms) == sorted(kept.block.median_ms)


def test_interleaved_timings_carry_their_spread():
    from edgeprune.runtimes.timing import spread

    assert spread([10.0] * 9) == 0.0
    assert spread([float(v) for v in range(1, 12)]) == pytest.approx((10 - 2) / 6)
