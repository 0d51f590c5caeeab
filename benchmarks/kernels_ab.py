"""Dense, the graph form and the ``--custom-kernels`` form of the same pruned model, in one
process on ExecuTorch / XNNPACK (batch 1, fp32): how much edgeprune's own kernels gain.

    python benchmarks/kernels_ab.py [--specs deit_tiny:tome@r16,...] [--threads 1]
                                    [--rounds 60] [--burst 1] [--name kernels_ab]

The three programs take turns in bursts (``runtimes.timing.interleave_bursts``: A B C,
B C A, …), each run ``--burst`` times in a row per turn. "First" is a turn's first run
(it follows another program, as every run at burst 1 does); "warm" the median of the
rest of the turn (burst > 1). Speedups are medians of per-round ratios against dense.

Writes benchmarks/results/<name>.json and .md. Not part of the test run; run it on a
quiet machine (pinned to one CPU for 1 thread: ``taskset -c 1``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from overhead import pte_runner
from timing import host_meta, write_results

from edgeprune.core.source import resolve
from edgeprune.runtimes.executorch.runner import set_threads, version
from edgeprune.runtimes.timing import interleave_bursts


def compare(spec: str, threads: int, rounds: int, burst: int) -> dict:
    src = resolve(spec)
    img = src.arch.img_size
    x = np.random.default_rng(0).standard_normal((1, 3, img, img), dtype=np.float32)
    fns, lows = {}, {}
    fns["dense"], lows["dense"] = pte_runner(resolve(src.arch.name).model(), threads, x)
    fns["graph"], lows["graph"] = pte_runner(src.model(), threads, x)
    fns["kernels"], lows["kernels"] = pte_runner(src.model(), threads, x, kernels=True)
    set_threads(threads)
    names = list(fns)
    times = interleave_bursts([fns[n] for n in names], rounds, 3, burst)
    bursts = dict(zip(names, times, strict=True))
    first = {n: np.array([b[0] for b in v]) for n, v in bursts.items()}
    warm = (
        {n: np.array([statistics.median(b[1:]) for b in v]) for n, v in bursts.items()}
        if burst > 1
        else None
    )
    ratio = resolve(src.arch.name).flops().total / src.flops().total
    out = {"spec": spec, "threads": threads, "gflops_ratio": ratio, "programs": {}}
    for n in names:
        row = {
            "xnnpack_ops": lows[n].inside,
            "outside": lows[n].outside,
            "segments": lows[n].segments,
            "first_ms": float(np.median(first[n])),
            "speedup_first": float(np.median(first["dense"] / first[n])),
        }
        if warm is not None:
            row["warm_ms"] = float(np.median(warm[n]))
            row["speedup_warm"] = float(np.median(warm["dense"] / warm[n]))
        out["programs"][n] = row
    return out


def _share(program: str, speedup: float, gflops_ratio: float) -> str:
    return "—" if program == "dense" else f"{speedup / gflops_ratio:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--specs", default="deit_tiny:tome@r16,deit_small:tome@r16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60, help="turns of each program (≥ 30)")
    ap.add_argument("--burst", type=int, default=1, help="runs a turn (1: every run is first)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="kernels_ab", help="results file name (no suffix)")
    args = ap.parse_args()
    if args.rounds < 30:
        ap.error("--rounds must be at least 30")
    if args.burst < 1:
        ap.error("--burst must be at least 1")
    rows = []
    for spec in args.specs.split(","):
        r = compare(spec, args.threads, args.rounds, args.burst)
        rows.append(r)
        for n, p in r["programs"].items():
            warm = f" warm {p['speedup_warm']:.3f}×" if "speedup_warm" in p else ""
            print(f"{spec:22s} {n:8s} first {p['speedup_first']:.3f}×{warm}", flush=True)
    meta = {
        **host_meta(),
        "runtime": f"executorch {version()} (XnnpackBackend, fp32), torch {torch.__version__}",
        "threads": args.threads,
        "rounds": args.rounds,
        "burst": args.burst,
    }
    lines = [
        "# edgeprune's own ExecuTorch kernels: dense, graph form and --custom-kernels",
        "",
        f"{meta['runtime']}, {meta['machine']}, {meta['date']}, {args.threads} thread(s), "
        f"{args.rounds} turns of {args.burst} run(s) per program, batch 1.",
        "",
        "| model | program | XNNPACK ops | outside XNNPACK | speedup, first runs | "
        "share of GFLOPs ratio | speedup, warm | share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["gflops_ratio"]
        for n, p in r["programs"].items():
            w = p.get("speedup_warm")
            lines.append(
                f"| {r['spec']} | {n} | {p['xnnpack_ops']} | {sum(p['outside'].values())} | "
                f"{p['speedup_first']:.3f}× | {_share(n, p['speedup_first'], g)} | "
                + (f"{w:.3f}× | {_share(n, w, g)} |" if w else " | |")
            )
    write_results(args.out, args.name, {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
