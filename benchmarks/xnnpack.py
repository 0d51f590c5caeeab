"""Dense vs pruned DeiT on ExecuTorch/XNNPACK (.pte, fp32): interleaved pairs, medians.

    python benchmarks/xnnpack.py [--specs deit_tiny:spvit,...] [--threads 1,2] [--pairs 60]
                                 [--burst 1] [--compare-raw] [--onnxruntime]

For every spec: the pruned model and its dense arch are exported exactly as
``edgeprune export --target executorch`` does (XNNPACK-friendly rewrites), each export
timed; then, per thread count, dense and pruned run A B / B A in one process (the XNNPACK
thread pool set for both) and the speedup is the median of the per-pair ratios, beside
the GFLOPs ratio. ``--compare-raw`` also lowers the graphs without the rewrites and
records their delegate segments and speedup (the "before" column); ``--onnxruntime`` adds
the same pairs in onnxruntime for the side-by-side table.

Writes benchmarks/results/<name>.json and <name>.md (--name, default xnnpack). Not part of the test run; run it on
a quiet machine (numbers taken beside other load are noise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from timing import (
    IDEAL_SHARE_TARGET,
    gain_share,
    host_meta,
    interleave,
    pair_ratio,
    share_of_ideal,
    summary,
    write_results,
)

from edgeprune.core.source import resolve
from edgeprune.export.executorch.target import lower
from edgeprune.runtimes.executorch.runner import ExecuTorchRunner, set_threads, version

DEFAULT_SPECS = [
    f"{arch}:{method}"
    for arch in ("deit_tiny", "deit_small")
    for method in ("spvit", "dynamicvit@0.7", "avit", "evit@0.7", "tome@r16")
]


def lowered(spec: str, friendly: bool = True, kernels: bool = False):
    src = resolve(spec)
    img = src.arch.img_size
    return lower(src.model(), torch.zeros(1, 3, img, img), friendly, kernels=kernels)


def pte_pair(dense_low, pruned_low, threads: int, pairs: int, warmup: int, burst: int = 1) -> dict:
    d, p = ExecuTorchRunner(threads=threads), ExecuTorchRunner(threads=threads)
    d.load(dense_low.buffer)
    p.load(pruned_low.buffer)
    set_threads(threads)
    x = [torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224), "f4"))]
    t = interleave(
        {"dense": lambda: d.method.execute(x), "pruned": lambda: p.method.execute(x)},
        pairs,
        warmup,
        burst=burst,
    )
    return {
        "dense_ms": summary(t["dense"]),
        "pruned_ms": summary(t["pruned"]),
        "speedup": pair_ratio(t["dense"], t["pruned"]),
    }


def ort_pair(
    spec: str, dense_spec: str, threads: int, pairs: int, warmup: int, burst: int = 1
) -> dict:
    from edgeprune.export.onnx import verified_onnx
    from edgeprune.runtimes.onnxruntime import make_session

    sd = make_session(verified_onnx(resolve(dense_spec), n_parity_inputs=2).data, threads)
    sp = make_session(verified_onnx(resolve(spec), n_parity_inputs=2).data, threads)
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224), "f4")}
    t = interleave(
        {"dense": lambda: sd.run(None, x), "pruned": lambda: sp.run(None, x)},
        pairs,
        warmup,
        burst=burst,
    )
    return {
        "dense_ms": summary(t["dense"]),
        "pruned_ms": summary(t["pruned"]),
        "speedup": pair_ratio(t["dense"], t["pruned"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--specs", default=",".join(DEFAULT_SPECS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--pairs", type=int, default=60, help="interleaved pairs (≥ 30)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument(
        "--burst",
        type=int,
        default=1,
        help="runs of a model back to back per round (1: A B / B A, as sections 8-15 of "
        "the report; > 1: the steady state of one model running repeatedly, the first "
        "run of each burst dropped)",
    )
    ap.add_argument("--compare-raw", action="store_true")
    ap.add_argument(
        "--custom-kernels",
        action="store_true",
        help="lower as `export --target executorch --custom-kernels` does (ToMe's merge as "
        "one edgeprune kernel)",
    )
    ap.add_argument("--onnxruntime", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="xnnpack", help="results file name (no suffix)")
    args = ap.parse_args()
    if args.pairs < 30:
        ap.error("--pairs must be at least 30")
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    rows, exports, dense_cache = [], {}, {}
    for spec in args.specs.split(","):
        src = resolve(spec)
        dense_spec = src.arch.name
        if dense_spec not in dense_cache:
            dense_cache[dense_spec] = {"good": lowered(dense_spec)}
            if args.compare_raw:
                dense_cache[dense_spec]["raw"] = lowered(dense_spec, False)
            exports[dense_spec] = dense_cache[dense_spec]["good"].seconds
        dense = dense_cache[dense_spec]
        good = lowered(spec, kernels=args.custom_kernels)
        exports[spec] = good.seconds
        raw = lowered(spec, False) if args.compare_raw else None
        ratio = resolve(dense_spec).flops().total / src.flops().total
        for th in threads:
            r = pte_pair(dense["good"], good, th, args.pairs, args.warmup, args.burst)
            s = r["speedup"]["median"]
            row = {
                "spec": spec,
                "threads": th,
                "batch": 1,
                "gflops_ratio": ratio,
                **r,
                "share_of_ideal": share_of_ideal(s, ratio),
                "gain_share": gain_share(s, ratio),
                "segments": {"dense": dense["good"].segments, "pruned": good.segments},
                "outside": good.outside,
                "ops_in_delegates": good.inside,
            }
            if raw is not None:
                rr = pte_pair(dense["raw"], raw, th, args.pairs, args.warmup, args.burst)
                row["raw"] = {
                    "segments": {"dense": dense["raw"].segments, "pruned": raw.segments},
                    "outside": raw.outside,
                    **rr,
                }
            if args.onnxruntime:
                row["onnxruntime"] = ort_pair(
                    spec, dense_spec, th, args.pairs, args.warmup, args.burst
                )
            rows.append(row)
            print(
                f"{spec:24s} t={th} dense {r['dense_ms']['median']:.2f} ms pruned "
                f"{r['pruned_ms']['median']:.2f} ms speedup {s:.3f}x (GFLOPs {ratio:.3f}x, "
                f"{row['share_of_ideal']:.0%}) segments {good.segments}",
                flush=True,
            )
    meta = {
        **host_meta(),
        "runtime": f"executorch {version()} (XnnpackBackend, fp32), torch {torch.__version__}",
        "pairs": args.pairs,
        "burst": args.burst,
        "custom_kernels": args.custom_kernels,
        "method": "interleaved dense/pruned pairs in one process, batch 1; speedup = median "
        "of per-pair ratios"
        + (f"; bursts of {args.burst} runs, the first dropped" if args.burst > 1 else ""),
    }
    lines = [
        "# Speedup on ExecuTorch / XNNPACK: dense vs pruned (batch 1, fp32)",
        "",
        f"{meta['runtime']}, {meta['machine']}, {meta['date']}, {args.pairs} interleaved pairs"
        + (f" (bursts of {args.burst}, the first dropped)" if args.burst > 1 else "")
        + ("; exported with --custom-kernels." if args.custom_kernels else "."),
        "",
        f"Share of ideal = speedup / GFLOPs ratio (target ≥ {IDEAL_SHARE_TARGET:.0%}).",
        "",
        "| model | threads | dense median / p90 (ms) | pruned median / p90 (ms) | speedup | "
        "GFLOPs ratio | share of ideal | segments (pruned) | raw segments / speedup | "
        "onnxruntime speedup (share) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["speedup"]["median"]
        raw = (
            f"{r['raw']['segments']['pruned']} / {r['raw']['speedup']['median']:.3f}×"
            if "raw" in r
            else ""
        )
        ort = ""
        if "onnxruntime" in r:
            so = r["onnxruntime"]["speedup"]["median"]
            ort = f"{so:.3f}× ({share_of_ideal(so, r['gflops_ratio']):.0%})"
        mark = "" if r["share_of_ideal"] >= IDEAL_SHARE_TARGET else " ✗"
        lines.append(
            f"| {r['spec']} | {r['threads']} | {r['dense_ms']['median']:.2f} / "
            f"{r['dense_ms']['p90']:.2f} | {r['pruned_ms']['median']:.2f} / "
            f"{r['pruned_ms']['p90']:.2f} | {s:.3f}× | {r['gflops_ratio']:.3f}× | "
            f"{r['share_of_ideal']:.1%}{mark} | {r['segments']['pruned']} | {raw} | {ort} |"
        )
    lines += [
        "",
        "Export to .pte (s): " + ", ".join(f"{k} {v['total']:.1f}" for k, v in exports.items()),
    ]
    data = {"meta": meta, "rows": rows, "export_seconds": exports}
    write_results(outdir, args.name, data, lines)


if __name__ == "__main__":
    main()
