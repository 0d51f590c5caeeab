"""The monotone latency curve and the noise measures (edgeprune.monotone)."""

import itertools
import random

import pytest

from edgeprune.monotone import isotonic, noise_summary, pass_spread, shape_breaks


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
