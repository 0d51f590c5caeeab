"""Honest timing helpers for the benchmarks: warm-up, interleaved A/B pairs, medians."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeprune.core.atomic import write_json_atomic, write_text_atomic
from edgeprune.runtimes.timing import interleave_samples


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
    """``edgeprune.runtimes.timing.interleave_samples`` over named fns: runs rotate who
    goes first (A B C, B C A, ...); with ``burst`` > 1 each fn runs that many times in a
    row per round and the first of those is discarded (the steady state of a model
    running back to back). Returns per-fn lists of milliseconds, paired by index."""
    names = list(fns)
    samples = interleave_samples(
        [fns[n] for n in names], runs, warmup, burst, max_seconds, min_rounds=10
    )
    return dict(zip(names, samples, strict=True))


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


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def host_meta() -> dict:
    """When and where a benchmark ran, for its results file: UTC date, architecture, CPU
    model and the cores this process may use (two hosts of one architecture differ in
    ``cpu``; REPORT.md names each run's machine from these keys)."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }


def write_results(outdir: str | Path, name: str, data: dict, lines: list[str]) -> None:
    """What every benchmark ends with: ``<outdir>/<name>.json`` (``data``) and
    ``<name>.md`` (``lines``), each written whole or not at all, and the table printed."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(outdir / f"{name}.json", data)
    md = "\n".join(lines).rstrip("\n") + "\n"
    write_text_atomic(outdir / f"{name}.md", md)
    print(md, end="")
