"""A small, self-contained interleaved timer for onnxruntime sessions.

Runs every session once per round (A B C … A B C …, the order rotating each round),
so the machine's drift hits all of them alike, and reports the median and p90 per
session. Kept deliberately tiny: the runtimes package's own timing can replace it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "runs": self.runs}


def time_interleaved(
    sessions: Sequence, inputs: Sequence[np.ndarray], rounds: int = 30, warmup: int = 3
) -> list[Timing]:
    """Time ``sessions[i].run`` on ``inputs[i]``, interleaved; one Timing each."""
    feeds = [{s.get_inputs()[0].name: x} for s, x in zip(sessions, inputs, strict=True)]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds, strict=True):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    k = len(sessions)
    for r in range(rounds):
        for j in range(k):
            i = (j + r) % k
            t0 = time.perf_counter()
            sessions[i].run(None, feeds[i])
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [
        Timing(statistics.median(t), float(np.percentile(np.asarray(t), 90)), len(t)) for t in times
    ]
