"""What the first run after another model costs, per program (ExecuTorch/XNNPACK).

    taskset -c 1 python benchmarks/switch_cost.py [--specs deit_tiny:tome@r16,...]
        [--rounds 40] [--burst 10] [--threads 1] [--name switch_cost]

``xnnpack.py`` times dense and pruned either alternately (burst 1: every run follows a
run of the other model) or in bursts (``--burst 10``: a model back to back, the first
run of each burst discarded). The two disagree by 1–2.5 % on the pruned models'
speedup. This script shows where that comes from. Each spec takes turns with its dense
arch, as in ``xnnpack.py``, each running ``burst`` times per turn: the first run of a
turn follows the other program, the others follow the program itself.

For both programs it prints the ops in the XNNPACK segments and on portable kernels,
the median first run, the median warm run (runs 2..burst) and their difference per
turn, the switch cost; then the speedup twice: from first runs (what burst 1 measures)
and from warm runs (burst 10). ExecuTorch reshapes and sets up every XNNPACK op at
every run, so a program's per-op state and code are touched at every run, and a
program with more ops has more of them to bring back after another program ran.
Writes benchmarks/results/<name>.json and .md. Not part of the test run; run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from timing import host_meta, pct, write_results  # noqa: E402

from edgeprune.core.source import resolve  # noqa: E402
from edgeprune.export.executorch.target import lower  # noqa: E402
from edgeprune.runtimes.executorch.runner import ExecuTorchRunner, set_threads, version  # noqa: E402
from edgeprune.runtimes.timing import interleave_bursts  # noqa: E402

DEFAULT_SPECS = "deit_tiny:tome@r16,deit_tiny:spvit,deit_tiny:dynamicvit@0.7"


def _counts(program: dict) -> dict:
    """A program's GFLOPs and op counts (everything but its run function)."""
    return {k: v for k, v in program.items() if k != "run"}


def _timings(first: np.ndarray, warm: np.ndarray) -> dict:
    cost = (first - warm) * 1e3
    return {
        "first_ms": float(np.median(first)),
        "warm_ms": float(np.median(warm)),
        "switch_cost_us": {
            "median": float(np.median(cost)),
            "p10": pct(list(cost), 10),
            "p90": pct(list(cost), 90),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--specs", default=DEFAULT_SPECS)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="switch_cost")
    args = ap.parse_args()
    if args.burst < 2:
        ap.error("--burst must be at least 2 (a first run and a warm one)")

    specs = args.specs.split(",")
    programs: dict[str, dict] = {}  # spec (a pruned one or a dense arch) -> its program

    def program(spec: str) -> dict:
        if spec not in programs:
            src = resolve(spec)
            img = src.arch.img_size
            low = lower(src.model(), torch.zeros(1, 3, img, img))
            runner = ExecuTorchRunner(threads=args.threads)
            runner.load(low.buffer)
            x = [torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, img, img), "f4"))]
            programs[spec] = {
                "run": lambda: runner.method.execute(x),
                "gflops": src.flops().total,
                "segments": low.segments,
                "ops_in_delegates": low.inside,
                "ops_outside_delegates": sum(low.outside.values()),
            }
            print(
                f"{spec}: {low.segments} segments, {low.inside} XNNPACK ops, "
                f"{programs[spec]['ops_outside_delegates']} portable",
                flush=True,
            )
        return programs[spec]

    rows = {}
    for spec in specs:  # each with its dense arch, alternating as in xnnpack.py
        dense_spec = resolve(spec).arch.name
        dense, pruned = program(dense_spec), program(spec)
        set_threads(args.threads)
        times = interleave_bursts([dense["run"], pruned["run"]], args.rounds, burst=args.burst)
        (d_first, d_warm), (first, warm) = (
            (np.array([b[0] for b in t]), np.array([statistics.median(b[1:]) for b in t]))
            for t in times
        )
        rows[spec] = {
            **_counts(pruned),
            **_timings(first, warm),
            "dense": {"spec": dense_spec, **_counts(dense), **_timings(d_first, d_warm)},
            "speedup_first_runs": float(np.median(d_first / first)),
            "speedup_warm_runs": float(np.median(d_warm / warm)),
            "gflops_ratio": dense["gflops"] / pruned["gflops"],
        }

    meta = {
        **host_meta(),
        "runtime": f"executorch {version()} (XnnpackBackend, fp32), torch {torch.__version__}",
        "threads": args.threads,
        "rounds": args.rounds,
        "burst": args.burst,
        "method": "each spec and its dense arch take turns, `burst` runs a turn "
        "(runtimes.timing.interleave_bursts); first run vs median of the others, per turn; "
        "speedups as medians of per-round ratios",
    }
    lines = [
        "# The first run after another model (ExecuTorch / XNNPACK, batch 1, fp32)",
        "",
        f"{meta['runtime']}, {meta['machine']}, {meta['date']}, {args.threads} thread(s), "
        f"{args.rounds} rounds of {args.burst} runs per program.",
        "",
        "| program | segments | XNNPACK ops | portable ops | first run (ms) | warm (ms) "
        "| switch cost (µs) | speedup, first runs | speedup, warm | GFLOPs ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, r in rows.items():
        for name, t in ((f"{r['dense']['spec']} (beside it)", r["dense"]), (spec, r)):
            sc = t["switch_cost_us"]
            tail = (
                "| |"
                if t is r["dense"]
                else f"{r['speedup_first_runs']:.3f}× | {r['speedup_warm_runs']:.3f}× "
                f"| {r['gflops_ratio']:.3f}×"
            )
            lines.append(
                f"| {name} | {t['segments']} | {t['ops_in_delegates']} | "
                f"{t['ops_outside_delegates']} | {t['first_ms']:.3f} | {t['warm_ms']:.3f} | "
                f"{sc['median']:.0f} ({sc['p10']:.0f}–{sc['p90']:.0f}) | {tail} |"
            )
    write_results(args.out, args.name, {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
