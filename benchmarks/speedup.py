"""Dense vs pruned DeiT in ONNX Runtime: interleaved runs, median of pairwise ratios.

    python benchmarks/speedup.py [--specs deit_tiny:dynamicvit@0.7,...] [--runs 200] [--name N]

Writes benchmarks/results/<name>.json and <name>.md (default speedup). Not part of the test run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import IDEAL_SHARE_TARGET, gain_share, host_meta, share_of_ideal, write_results

from edgeprune.core.source import resolve
from edgeprune.export.onnx import export_onnx
from edgeprune.runtimes.onnxruntime import make_session, version

DEFAULT_SPECS = [
    f"{arch}:{method}"
    for method in ("dynamicvit@0.7", "spvit", "avit", "evit@0.7", "tome@r16")
    for arch in ("deit_tiny", "deit_small")
]  # avit without --calibration runs its placeholder schedule


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def interleaved(sess_a, sess_b, x: np.ndarray, runs: int, warmup: int) -> dict:
    """A B A B …: per-pair ratio a/b; medians and p90 of each side."""
    feeds_a = {sess_a.get_inputs()[0].name: x}
    feeds_b = {sess_b.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess_a.run(None, feeds_a)
        sess_b.run(None, feeds_b)
    ta, tb, ratios = [], [], []
    for i in range(runs):
        order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
        t = [0.0, 0.0]
        for which in order:
            s, f = (sess_a, feeds_a) if which == 0 else (sess_b, feeds_b)
            t0 = time.perf_counter()
            s.run(None, f)
            t[which] = (time.perf_counter() - t0) * 1e3
        ta.append(t[0])
        tb.append(t[1])
        ratios.append(t[0] / t[1])
    return {
        "dense_ms": {"median": statistics.median(ta), "p90": pct(ta, 90)},
        "pruned_ms": {"median": statistics.median(tb), "p90": pct(tb, 90)},
        "speedup_median": statistics.median(ratios),
        "speedup_p10": pct(ratios, 10),
        "speedup_p90": pct(ratios, 90),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--specs", default=",".join(DEFAULT_SPECS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="speedup", help="results file name (no suffix)")
    args = ap.parse_args()
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for spec in args.specs.split(","):
            pruned = resolve(spec)
            dense = resolve(pruned.arch.name)
            pa, pd = Path(td) / "p.onnx", Path(td) / "d.onnx"
            export_onnx(pruned, pa, batch=args.batch, force=True)
            export_onnx(dense, pd, batch=args.batch, force=True)
            gflops_ratio = dense.flops().total / pruned.flops().total
            x = np.random.default_rng(0).standard_normal(
                (args.batch, 3, 224, 224), dtype=np.float32
            )
            for th in (int(t) for t in args.threads.split(",")):
                r = interleaved(
                    make_session(pd, th), make_session(pa, th), x, args.runs, args.warmup
                )
                r.update(
                    spec=spec,
                    threads=th,
                    batch=args.batch,
                    gflops_ratio=gflops_ratio,
                    share_of_ideal=share_of_ideal(r["speedup_median"], gflops_ratio),
                    gain_share=gain_share(r["speedup_median"], gflops_ratio),
                )
                rows.append(r)
                print(
                    f"{spec:28s} threads={th} dense {r['dense_ms']['median']:.2f} ms  "
                    f"pruned {r['pruned_ms']['median']:.2f} ms  speedup {r['speedup_median']:.3f}x "
                    f"(GFLOPs ratio {gflops_ratio:.3f}x, {r['share_of_ideal']:.0%} of it)"
                )
    meta = {
        **host_meta(),
        "runtime": f"onnxruntime {version()} (CPUExecutionProvider)",
        "python": platform.python_version(),
        "method": "interleaved A/B runs in one process; speedup = median of per-pair ratios",
    }
    lines = [
        f"# Speedup: dense vs pruned (ONNX Runtime, batch {args.batch})",
        "",
        f"{meta['runtime']}, {meta['machine']}, {meta['date']}, {args.runs} interleaved pairs.",
        "",
        f"Share of ideal = speedup / GFLOPs ratio (target ≥ {IDEAL_SHARE_TARGET:.0%}, ✗ below); "
        "share of saving = (speedup − 1) / (GFLOPs ratio − 1).",
        "",
        "| model | threads | dense median / p90 (ms) | pruned median / p90 (ms) | speedup (median of ratios) | GFLOPs ratio | share of ideal | share of saving |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "" if r["share_of_ideal"] >= IDEAL_SHARE_TARGET else " ✗"
        saving = "" if r["gain_share"] is None else f"{r['gain_share']:.0%}"
        lines.append(
            f"| {r['spec']} | {r['threads']} | {r['dense_ms']['median']:.2f} / {r['dense_ms']['p90']:.2f} "
            f"| {r['pruned_ms']['median']:.2f} / {r['pruned_ms']['p90']:.2f} | {r['speedup_median']:.3f}× "
            f"| {r['gflops_ratio']:.3f}× | {r['share_of_ideal']:.1%}{mark} | {saving} |"
        )
    write_results(outdir, args.name, {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
