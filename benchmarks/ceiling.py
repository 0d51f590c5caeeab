"""How close to its GFLOPs ratio a pruned backbone can come on this machine (issue #14).

    taskset -c 1 python benchmarks/ceiling.py [--archs deit_tiny,deit_small] [--threads 1]
        [--specs deit_tiny:spvit,...] [--rounds 60] [--burst 1]
        [--runtime onnxruntime|executorch] [--name ceiling]

A GFLOPs ratio prices every multiply-add the same, whatever the token count. At batch 1
each linear layer also reads its whole weight matrix once per inference, however few
tokens it multiplies, and every node has a launch cost. Neither shrinks with the tokens.

This benchmark times the backbone alone, with no selector (``overhead.py``'s slice
reference), at uniform token counts n, interleaved in one process. It fits

    latency(n) = a + b · GMACs(n)

where a is the time that does not shrink with the tokens and b the time per GMAC. For
each method's plan the fit then gives the best speedup its backbone can have on this
machine, even with free selectors:

    (a + b · G_dense) / (a + b · G_plan)

It prints this beside the GFLOPs ratio, the measured slice reference and the pruned
model, all timed in the same process. With ONNX Runtime, the profiler also splits the
latency at the smallest n into matrix products (weight reads) and everything else.
Writes benchmarks/results/<name>.json, .md and .png. Not part of the test run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from overhead import SliceReference, model_onnx, op_times, ort_runner, pte_runner  # noqa: E402
from timing import (  # noqa: E402
    host_meta,
    interleave,
    pair_ratio,
    share_of_ideal,
    write_results,
)

from edgeprune.core.flops import plan_flops  # noqa: E402
from edgeprune.core.plan import TokenPlan  # noqa: E402
from edgeprune.core.source import resolve  # noqa: E402
from edgeprune.export.onnx import export_onnx  # noqa: E402
from edgeprune.runtimes.onnxruntime import version  # noqa: E402

GRID = (197, 150, 100, 60, 30, 10)  # the range plans use (ToMe's last block: 11 on DeiT-S)
DEFAULT_SPECS = {
    "deit_tiny": "deit_tiny:spvit,deit_tiny:tome@r16,deit_tiny:avit,deit_tiny:dynamicvit@0.7",
    "deit_small": "deit_small:spvit,deit_small:tome@r16",
}
MATRIX_PRODUCTS = ("Gemm", "MatMul", "FusedMatMul")


def uniform_plan(arch, n: int) -> TokenPlan:
    return TokenPlan(arch, "uniform", (), (), (n,) * arch.depth, (n,) * arch.depth)


def fit(gmacs: list[float], ms: list[float]) -> tuple[float, float, float]:
    """Least squares ms = a + b·GMACs; returns (a, b, worst relative residual)."""
    b, a = np.polyfit(np.asarray(gmacs), np.asarray(ms), 1)
    worst = max(abs(a + b * g - t) / t for g, t in zip(gmacs, ms, strict=True))
    return float(a), float(b), float(worst)


class Timed:
    """Graphs to time together: ONNX files on ONNX Runtime, or .pte programs."""

    def __init__(self, runtime: str, threads: int, td: str):
        self.runtime, self.threads, self.td = runtime, threads, Path(td)
        self.runners: dict[str, object] = {}
        self.paths: dict[str, Path] = {}
        self.x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)

    def add(self, name: str, model=None, source=None) -> None:
        if self.runtime == "executorch":
            m = model if model is not None else source.model()
            self.runners[name], _ = pte_runner(m, self.threads, self.x)
            return
        path = self.td / f"{name.replace(':', '_').replace('@', '_')}.onnx"
        if model is not None:
            model_onnx(model, path)
        else:
            export_onnx(source, path, force=True, n_parity_inputs=1)
        self.runners[name] = ort_runner(path, self.threads, self.x)
        self.paths[name] = path


def run_arch(arch_name: str, specs: list[str], args, td: str) -> dict:
    arch = resolve(arch_name).arch
    grid = [n for n in GRID if n <= arch.num_tokens]
    t = Timed(args.runtime, args.threads, td)
    gmacs = {}
    for n in grid:
        plan = uniform_plan(arch, n)
        t.add(f"n{n}", model=SliceReference(arch, plan).init_random(0).eval())
        gmacs[n] = plan_flops(plan).pruned
    for spec in specs:
        src = resolve(spec)
        t.add(spec, source=src)
        t.add(f"{spec} slice", model=SliceReference(arch, src.plan).init_random(0).eval())
    if args.runtime == "executorch":
        from edgeprune.runtimes.executorch.runner import set_threads

        set_threads(args.threads)
    ms = interleave(t.runners, runs=args.rounds, warmup=10, burst=args.burst)
    med = {k: float(np.median(v)) for k, v in ms.items()}
    a, b, worst = fit([gmacs[n] for n in grid], [med[f"n{n}"] for n in grid])
    dense = f"n{arch.num_tokens}"
    out = {
        "arch": arch_name,
        "grid": [
            {"tokens": n, "gmacs": gmacs[n], "ms": med[f"n{n}"], "fit_ms": a + b * gmacs[n]}
            for n in grid
        ],
        "fixed_ms": a,
        "ms_per_gmac": b,
        "fixed_share_of_dense": a / med[dense],
        "worst_fit_residual": worst,
        "rows": [],
    }
    for spec in specs:
        fl = resolve(spec).flops()
        ceiling = (a + b * fl.dense) / (a + b * fl.pruned)
        ratio = fl.dense / fl.total
        speed = pair_ratio(ms[dense], ms[spec])["median"]
        slice_ = pair_ratio(ms[dense], ms[f"{spec} slice"])["median"]
        out["rows"].append(
            {
                "spec": spec,
                "gflops_ratio": ratio,
                "backbone_ratio": fl.dense / fl.pruned,
                "fit_ceiling": ceiling,
                "fit_ceiling_share": share_of_ideal(ceiling, ratio),
                "slice_reference": slice_,
                "slice_share": share_of_ideal(slice_, ratio),
                "speedup": speed,
                "share": share_of_ideal(speed, ratio),
            }
        )
    if args.runtime == "onnxruntime":
        for n in (grid[0], grid[-1]):
            ops = op_times(t.paths[f"n{n}"], args.threads, runs=40)
            total = sum(ops.values())
            mm = sum(ops[o] for o in MATRIX_PRODUCTS)
            out[f"profile_n{n}"] = {
                "kernel_ms": total / 1000,
                "matrix_products_ms": mm / 1000,
                "conv_ms": ops["Conv"] / 1000,
                "other_ms": (total - mm - ops["Conv"]) / 1000,
                "nodes_by_type": {k: round(v / 1000, 4) for k, v in ops.most_common()},
            }
    return out


def render(results: list[dict], meta: dict) -> list[str]:
    lines = [
        f"# What the backbone can reach: latency = a + b · GMACs ({meta['runtime']}, "
        f"{meta['threads']} thread(s), batch 1)",
        "",
        f"{meta['machine']}, {meta['date']}, {meta['rounds']} interleaved rounds, medians"
        + (
            f"; bursts of {meta['burst']} runs, the first dropped (steady state)."
            if meta.get("burst", 1) > 1
            else "; one run of each program per round (each follows another program)."
        ),
        "",
        "a: the latency that does not shrink with the tokens (weight reads, node launches);",
        "ceiling: (a + b·G_dense) / (a + b·G_plan), the best speedup of the plan's backbone",
        "with free selectors; shares are of the GFLOPs ratio (selectors included).",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['arch']}: a = {r['fixed_ms']:.3f} ms ({r['fixed_share_of_dense']:.1%} of "
            f"dense), b = {r['ms_per_gmac']:.3f} ms/GMAC, worst fit residual "
            f"{r['worst_fit_residual']:.1%}",
            "",
            "| tokens | GMACs | measured (ms) | fit (ms) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {g['tokens']} | {g['gmacs']:.4f} | {g['ms']:.3f} | {g['fit_ms']:.3f} |"
            for g in r["grid"]
        ]
        for key in sorted(k for k in r if k.startswith("profile_n")):
            p = r[key]
            lines.append(
                f"\nONNX Runtime kernels at {key[len('profile_n') :]} tokens: "
                f"{p['kernel_ms']:.3f} ms, of which matrix products {p['matrix_products_ms']:.3f}, "
                f"patch conv {p['conv_ms']:.3f}, everything else {p['other_ms']:.3f}."
            )
        lines += [
            "",
            "| model | GFLOPs ratio | ceiling from the fit (share) | slice reference (share) "
            "| measured (share) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {w['spec']} | {w['gflops_ratio']:.3f}× | {w['fit_ceiling']:.3f}× "
            f"({w['fit_ceiling_share']:.1%}) | {w['slice_reference']:.3f}× "
            f"({w['slice_share']:.1%}) | {w['speedup']:.3f}× ({w['share']:.1%}) |"
            for w in r["rows"]
        ]
        lines.append("")
    return lines


def plot(results: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        g = [p["gmacs"] for p in r["grid"]]
        ax.plot(g, [p["ms"] for p in r["grid"]], "o", label="backbone at n tokens (measured)")
        xs = np.linspace(0, max(g), 50)
        ax.plot(xs, r["fixed_ms"] + r["ms_per_gmac"] * xs, "-", label="a + b·GMACs")
        ax.plot(
            xs,
            r["ms_per_gmac"] * xs * (1 + r["fixed_ms"] / (r["ms_per_gmac"] * max(g))),
            ":",
            label="proportional to GMACs (the GFLOPs ratio's model)",
        )
        for p in r["grid"]:
            ax.annotate(
                str(p["tokens"]),
                (p["gmacs"], p["ms"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -8),
            )
        ax.set_xlabel("GMACs")
        ax.set_ylabel("latency (ms)")
        ax.set_title(
            f"{r['arch']}: a = {r['fixed_ms']:.2f} ms, {r['fixed_share_of_dense']:.0%} of dense"
        )
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"{meta['runtime']}, {meta['threads']} thread(s), batch 1", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--archs", default="deit_tiny,deit_small")
    ap.add_argument("--specs", default=None, help="default: the methods of each arch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument(
        "--burst",
        type=int,
        default=1,
        help="runs of each program in a row per round, the first dropped (10: steady state)",
    )
    ap.add_argument("--runtime", choices=("onnxruntime", "executorch"), default="onnxruntime")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="ceiling", help="results file name (no suffix)")
    args = ap.parse_args()
    results, meta = [], _meta(args)
    with tempfile.TemporaryDirectory() as td:
        for arch in args.archs.split(","):
            specs = (args.specs or DEFAULT_SPECS.get(arch, "")).split(",")
            specs = [s for s in specs if s and resolve(s).arch.name == arch]
            results.append(run_arch(arch, specs, args, td))
            print("\n".join(render(results[-1:], meta)), flush=True)
    outdir = Path(args.out)
    write_results(outdir, args.name, {"meta": meta, "results": results}, render(results, meta))
    plot(results, outdir / f"{args.name}.png", meta)


def _meta(args) -> dict:
    if args.runtime == "executorch":
        from edgeprune.runtimes.executorch.runner import version as executorch_version

        runtime = f"executorch {executorch_version()} (XNNPACK, fp32)"
    else:
        runtime = f"onnxruntime {version()} (CPUExecutionProvider)"
    return {
        **host_meta(),
        "runtime": runtime,
        "python": platform.python_version(),
        "threads": args.threads,
        "rounds": args.rounds,
        "burst": args.burst,
    }


if __name__ == "__main__":
    main()
