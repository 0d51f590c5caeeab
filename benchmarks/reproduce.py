"""The papers' figures beside ours, measured in one go on this machine (ONNX Runtime CPU).

    python benchmarks/reproduce.py [--quick] [--out benchmarks/results] [--name reproduce]

GFLOPs beside the papers; dense vs every method's default schedule (batch 1 and 8, 1 and
2 threads); SPViT's real-time DeiT-T and a budget for it on a profile of this machine;
the latency model's error (validate-profile); the selectors' share of the predicted
latency; the exported graph vs the same model in eager PyTorch; ONNX export wall time.
Every ratio comes from interleaved runs in one process, medians of per-pair ratios.

Writes benchmarks/results/<name>.json, .md and .png; ``python benchmarks/report.py``
reads them into REPORT.md. Not part of the test run. --quick: DeiT-T/S, fewer runs
(~10 min on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from timing import (  # noqa: E402
    IDEAL_SHARE_TARGET,
    gain_share,
    host_meta,
    interleave,
    pair_ratio,
    share_of_ideal,
    summary,
    write_results,
)

from edgeprune.budget.search import search  # noqa: E402
from edgeprune.core.errors import EdgepruneError  # noqa: E402
from edgeprune.core.methods import METHODS  # noqa: E402
from edgeprune.core.source import resolve  # noqa: E402
from edgeprune.export.onnx import export_onnx  # noqa: E402
from edgeprune.latency.model import LatencyModel  # noqa: E402
from edgeprune.profiles.devices import get_device  # noqa: E402
from edgeprune.profiling.sweep import ProfileRequest, measure  # noqa: E402
from edgeprune.profiling.validate import validate_profile  # noqa: E402
from edgeprune.runtimes.onnxruntime import make_session, version  # noqa: E402

PAPER_GFLOPS = {
    ("deit_tiny", "dense"): 1.3,
    ("deit_small", "dense"): 4.6,
    ("deit_base", "dense"): 17.6,
    ("deit_small", "dynamicvit"): 2.9,
    ("deit_base", "dynamicvit"): 11.4,
}
SPVIT_PAPER = {"dense_ms": 44.0, "spvit_ms": 26.0}  # DeiT-T on a Samsung Galaxy S20


@dataclass(kw_only=True)
class Settings:
    """How long to time: runs per comparison, the seconds one may take, profile rounds."""

    quick: bool
    runs: int
    budget_s: float


def method_spec(arch: str, method: str) -> str:
    return arch if method == "dense" else f"{arch}:{method}"


def default_specs(archs: list[str]) -> list[str]:
    """Every registered method at its default schedule, per arch (A-ViT needs a
    calibration, done at random inputs by its own config; skipped if unavailable)."""
    out = []
    for a in archs:
        for m in METHODS:
            if m == "dense":
                continue
            spec = method_spec(a, m)
            try:
                resolve(spec)
            except Exception as e:  # a method that needs more than a spec (e.g. calibration)
                print(f"  skip {spec}: {e}")
                continue
            out.append(spec)
    return out


class Timer:
    """ORT sessions per (spec, batch, threads), exported once into a temp dir."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.paths: dict[tuple[str, int], Path] = {}
        self.export_seconds: dict[tuple[str, int], float] = {}

    def onnx(self, spec: str, batch: int) -> Path:
        key = (spec, batch)
        if key not in self.paths:
            p = self.workdir / f"{spec.replace(':', '_').replace('@', '_')}_b{batch}.onnx"
            t0 = time.perf_counter()
            export_onnx(resolve(spec), p, batch=batch, force=True, n_parity_inputs=max(2, batch))
            self.export_seconds[key] = time.perf_counter() - t0
            self.paths[key] = p
        return self.paths[key]

    def runner(self, spec: str, batch: int, threads: int):
        sess = make_session(self.onnx(spec, batch), threads=threads)
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        feeds = {sess.get_inputs()[0].name: x}
        return lambda: sess.run(None, feeds)


def gflops_table(archs: list[str]) -> list[dict]:
    rows = []
    for a in archs:
        for m in METHODS:
            spec = method_spec(a, m)
            try:
                src = resolve(spec)
            except Exception:
                continue
            fl = src.flops()
            paper = PAPER_GFLOPS.get((a, m))
            value = fl.dense if m == "dense" else fl.pruned
            rows.append(
                {
                    "spec": spec,
                    "dense": fl.dense,
                    "pruned": fl.pruned,
                    "selectors": fl.selectors,
                    "total": fl.total,
                    "paper": paper,
                    "error": None if paper is None else (value - paper) / paper,
                    "tokens_per_block": list(src.plan.tokens_per_block),
                }
            )
    return rows


def speedup_row(timer: Timer, spec: str, batch: int, threads: int, s: Settings) -> dict:
    src = resolve(spec)
    ideal = src.flops().dense / src.flops().total
    t = interleave(
        {
            "dense": timer.runner(src.arch.name, batch, threads),
            "pruned": timer.runner(spec, batch, threads),
        },
        runs=s.runs,
        warmup=3,
        max_seconds=s.budget_s,
    )
    r = pair_ratio(t["dense"], t["pruned"])
    print(
        f"  {spec:26s} b={batch} t={threads}: {r['median']:.3f}x (ideal {ideal:.3f}x, "
        f"{share_of_ideal(r['median'], ideal):.0%} of it)"
    )
    return {
        "spec": spec,
        "batch": batch,
        "threads": threads,
        "dense_ms": summary(t["dense"]),
        "pruned_ms": summary(t["pruned"]),
        "speedup": r,
        "gflops_ratio": ideal,
        "share_of_ideal": share_of_ideal(r["median"], ideal),
        "gain_share": gain_share(r["median"], ideal),
    }


def speedup_table(timer: Timer, specs: list[str], batches: list[int], s: Settings) -> list[dict]:
    """Dense vs each spec at 1 and 2 threads; an export refused (e.g. a parity failure)
    is recorded, never timed."""
    rows = []
    for spec in specs:
        try:
            timer.onnx(spec, batches[0])
        except EdgepruneError as e:
            print(f"  {spec}: export refused: {e.one_line()}")
            rows.append({"spec": spec, "refused": e.one_line()})
            continue
        rows += [speedup_row(timer, spec, b, th, s) for b in batches for th in (1, 2)]
    return rows


def eager_vs_export(timer: Timer, specs: list[str], threads: int, s: Settings) -> list[dict]:
    """Our exported ORT graph vs the same model run eagerly in PyTorch (same threads)."""
    rows = []
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for spec in specs:
            model = resolve(spec).model()
            x = torch.randn(1, 3, 224, 224)

            def eager(model=model, x=x):
                with torch.inference_mode():
                    model(x)

            t = interleave(
                {"eager": eager, "onnx": timer.runner(spec, 1, threads)},
                runs=max(10, s.runs // 2),
                warmup=3,
                max_seconds=s.budget_s,
            )
            rows.append(
                {
                    "spec": spec,
                    "threads": threads,
                    "eager_ms": summary(t["eager"]),
                    "onnx_ms": summary(t["onnx"]),
                    "speedup": pair_ratio(t["eager"], t["onnx"]),
                }
            )
            print(f"  {spec:26s} eager/onnx {rows[-1]['speedup']['median']:.2f}x")
    finally:
        torch.set_num_threads(prev)
    return rows


def profile(arch: str, method: str, s: Settings, data: dict) -> LatencyModel:
    """A 1-thread latency table of this machine, as ``edgeprune profile`` measures it."""
    t0 = time.perf_counter()
    req = ProfileRequest(
        device=get_device("cpu"),
        arch=resolve(arch).arch,
        method=method,
        threads=1,
        rounds=2 if s.quick else 3,
    )
    table = measure(req)
    data.setdefault("profile_seconds", {})[f"{arch}:{method}"] = time.perf_counter() - t0
    return LatencyModel(table, f"{arch}/{method} profile")


def spvit_budget(timer: Timer, model: LatencyModel, dense_ms: float, s: Settings, workdir: Path):
    """A ``free`` SPViT schedule for 26/44 × the measured dense latency, exported and timed
    in steady state (bursts of 3, the first discarded) interleaved with dense: what
    ``edgeprune bench`` measures, a model running back to back."""
    target = dense_ms * SPVIT_PAPER["spvit_ms"] / SPVIT_PAPER["dense_ms"]
    res = search(model, target, method="spvit", schedule="free")
    chosen = ",".join(f"{x:.3f}" for x in res.chosen.keep_ratios)
    spec = "deit_tiny:spvit@budget"
    path = workdir / "budget.onnx"
    export_onnx(resolve("deit_tiny:spvit", keep=chosen), path, force=True, n_parity_inputs=2)
    timer.paths[(spec, 1)] = path
    tb = interleave(
        {"dense": timer.runner("deit_tiny", 1, 1), "budget": timer.runner(spec, 1, 1)},
        runs=max(s.runs, 60),
        warmup=5,
        max_seconds=s.budget_s * 4,
        burst=3,
    )
    dense_again = summary(tb["dense"])
    return {
        "target_ms": target,
        "keep_ratios": list(res.chosen.keep_ratios),
        "predicted_ms": res.chosen.predicted_ms,
        "measured_ms": summary(tb["budget"]),
        "dense_ms_same_run": dense_again,
        "target_ms_same_run": dense_again["median"]
        * SPVIT_PAPER["spvit_ms"]
        / SPVIT_PAPER["dense_ms"],
        "tokens_per_block": list(res.chosen.plan.tokens_per_block),
    }


def spvit_realtime(data: dict, timer: Timer, s: Settings, workdir: Path) -> LatencyModel:
    """SPViT's real-time DeiT-T (1 thread, batch 1) beside the paper; returns the
    deit_tiny/spvit profile it budgets on."""
    print("SPViT real-time DeiT-T")
    t = interleave(
        {"dense": timer.runner("deit_tiny", 1, 1), "spvit": timer.runner("deit_tiny:spvit", 1, 1)},
        runs=max(s.runs, 60),
        warmup=5,
        max_seconds=s.budget_s * 2,
    )
    dense_ms = summary(t["dense"])
    model = profile("deit_tiny", "spvit", s, data)
    data["spvit_realtime"] = {
        "dense_ms": dense_ms,
        "spvit_ms": summary(t["spvit"]),
        "speedup": pair_ratio(t["dense"], t["spvit"]),
        "paper_speedup": SPVIT_PAPER["dense_ms"] / SPVIT_PAPER["spvit_ms"],
        "budget": spvit_budget(timer, model, dense_ms["median"], s, workdir),
    }
    return model


def model_error(data: dict, s: Settings) -> LatencyModel:
    """validate-profile on fresh DynamicViT profiles of DeiT-T and DeiT-S (1 thread);
    returns the DeiT-T one."""
    print("latency model error")
    data["model_error"] = []
    models = {}
    for arch in ("deit_tiny", "deit_small"):
        m = models[arch] = profile(arch, "dynamicvit", s, data)
        rep = validate_profile(
            m, configs=8 if s.quick else 20, threads=1, rounds=10 if s.quick else 30
        )
        e2e = m.table.e2e
        data["model_error"].append(
            {
                "profile": f"{arch}/dynamicvit",
                **rep.to_dict(),
                "e2e_fit": None
                if e2e is None
                else {"offset_ms": e2e.offset_ms, "scale": e2e.scale},
            }
        )
    return models["deit_tiny"]


def selector_overhead(data: dict, models: dict[str, LatencyModel]) -> None:
    """The selectors' share of each model's predicted latency (from the profiles)."""
    data["selector_overhead"] = []
    for spec, mdl in models.items():
        p = mdl.predict(resolve(spec).plan)
        data["selector_overhead"].append(
            {
                "spec": spec,
                "total_ms": p.total_ms,
                "selectors_ms": sum(p.selectors_ms),
                "share": sum(p.selectors_ms) / p.total_ms,
            }
        )


def measure_all(s: Settings, archs: list[str]) -> dict:
    data: dict = {"gflops": gflops_table(["deit_tiny", "deit_small", "deit_base"])}
    with tempfile.TemporaryDirectory() as td:
        timer = Timer(Path(td))
        specs = default_specs(archs[:2])
        print("speedups")
        data["speedup"] = speedup_table(timer, specs, [1], s)
        tiny = [x for x in specs if x.startswith("deit_tiny")]
        data["speedup"] += speedup_table(
            timer,
            tiny,
            [8],
            Settings(quick=s.quick, runs=max(10, s.runs // 4), budget_s=s.budget_s),
        )
        spvit_model = spvit_realtime(data, timer, s, Path(td))
        tiny_model = model_error(data, s)
        selector_overhead(
            data, {"deit_tiny:spvit": spvit_model, "deit_tiny:dynamicvit@0.7": tiny_model}
        )
        print("eager vs exported")
        ok = [x for x in specs if (x, 1) in timer.paths]
        data["eager"] = eager_vs_export(timer, ok, 1, s)
        data["export_cost"] = [
            {"spec": x, "batch": b, "seconds": t} for (x, b), t in timer.export_seconds.items()
        ]
    return data


def fmt_ms(s: dict) -> str:
    return f"{s['median']:.2f} / {s['p90']:.2f}"


def render_speed(data: dict) -> list[str]:
    lines = [
        "## GFLOPs (multiply-adds) beside the papers",
        "",
        "| model | dense | pruned backbone | selectors | total | paper | error vs paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["gflops"]:
        paper = "" if r["paper"] is None else f"{r['paper']}"
        err = "" if r["error"] is None else f"{r['error']:+.1%}"
        lines.append(
            f"| {r['spec']} | {r['dense']:.2f} | {r['pruned']:.2f} | {r['selectors']:.3f} | "
            f"{r['total']:.2f} | {paper} | {err} |"
        )
    lines += [
        "",
        "## Speedup: dense vs each method's default schedule",
        "",
        f"Share of ideal = speedup / GFLOPs ratio (✗ below {IDEAL_SHARE_TARGET:.0%}).",
        "",
        "| model | batch | threads | dense ms | pruned ms | speedup | GFLOPs ratio | share of ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["speedup"]:
        if "refused" in r:
            lines.append(f"| {r['spec']} | — | — | export refused: {r['refused']} | | | | |")
            continue
        mark = "" if r["share_of_ideal"] >= IDEAL_SHARE_TARGET else " ✗"
        lines.append(
            f"| {r['spec']} | {r['batch']} | {r['threads']} | {fmt_ms(r['dense_ms'])} | "
            f"{fmt_ms(r['pruned_ms'])} | {r['speedup']['median']:.3f}× | "
            f"{r['gflops_ratio']:.3f}× | {r['share_of_ideal']:.1%}{mark} |"
        )
    return lines


def render_model(data: dict) -> list[str]:
    rt, b = data["spvit_realtime"], data["spvit_realtime"]["budget"]
    meas, target = b["measured_ms"]["median"], b["target_ms_same_run"]
    lines = [
        "",
        "## SPViT's real-time DeiT-T (1 thread, batch 1)",
        "",
        f"Dense {fmt_ms(rt['dense_ms'])} ms, SPViT {fmt_ms(rt['spvit_ms'])} ms: "
        f"{rt['speedup']['median']:.2f}× (paper {rt['paper_speedup']:.2f}×). Budget for "
        f"26/44 × dense: keep {[round(x, 3) for x in b['keep_ratios']]}, predicted "
        f"{b['predicted_ms']:.2f} ms, measured {meas:.2f} ms against {target:.2f} ms: "
        f"{'met' if meas <= target else 'missed'}.",
        "",
        "## Latency model error (validate-profile)",
        "",
        "| profile | configs | median error | p90 error | drift |",
        "|---|---|---|---|---|",
    ]
    for r in data["model_error"]:
        drift = "" if r.get("drift") is None else f"{r['drift']:+.1%}"
        lines.append(
            f"| {r['profile']} | {r['configs']} | {r['median_rel_error']:.1%} | "
            f"{r['p90_rel_error']:.1%} | {drift} |"
        )
    lines += ["", "| model | predicted ms | selectors ms | share |", "|---|---|---|---|"]
    lines += [
        f"| {r['spec']} | {r['total_ms']:.2f} | {r['selectors_ms']:.3f} | {r['share']:.1%} |"
        for r in data["selector_overhead"]
    ]
    return lines


def render_export(data: dict) -> list[str]:
    lines = [
        "",
        "## Exported graph vs eager PyTorch (batch 1)",
        "",
        "| model | threads | eager ms | ONNX Runtime ms | speedup from exporting |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['spec']} | {r['threads']} | {fmt_ms(r['eager_ms'])} | {fmt_ms(r['onnx_ms'])} | "
        f"{r['speedup']['median']:.2f}× |"
        for r in data["eager"]
    ]
    lines += ["", "## ONNX export wall time", "", "| model | batch | s |", "|---|---|---|"]
    lines += [f"| {r['spec']} | {r['batch']} | {r['seconds']:.1f} |" for r in data["export_cost"]]
    return lines


def render(data: dict) -> list[str]:
    """The results file's markdown: the tables of ``data``."""
    m = data["meta"]
    head = [
        "# The papers' figures beside ours (ONNX Runtime CPU)",
        "",
        f"{m['runtime']}, torch {m['torch']}, Python {m['python']}, {m['machine']}, "
        f"{m['cores']} cores, {m['date']}. Mode: {m['mode']}.",
        "",
    ]
    return head + render_speed(data) + render_model(data) + render_export(data)


def plot_speedups(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.get("batch") == 1 and r.get("threads") == 1]
    if not sel:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in sel:
        ax.scatter(r["gflops_ratio"], r["speedup"]["median"])
        ax.annotate(r["spec"], (r["gflops_ratio"], r["speedup"]["median"]), fontsize=7)
    lim = max(max(r["gflops_ratio"] for r in sel), max(r["speedup"]["median"] for r in sel)) * 1.05
    ax.plot([1, lim], [1, lim], "k--", lw=0.8, label="ideal (speedup = GFLOPs ratio)")
    t = IDEAL_SHARE_TARGET
    ax.plot([1, lim], [t, t * lim], "k:", lw=0.8, label=f"{t:.0%} of ideal")
    ax.set_xlabel("GFLOPs ratio dense / pruned")
    ax.set_ylabel("measured speedup (batch 1, 1 thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="reproduce", help="results file name (no suffix)")
    args = ap.parse_args()
    archs = ["deit_tiny", "deit_small"] if args.quick else ["deit_tiny", "deit_small", "deit_base"]
    runs, budget = (40, 8.0) if args.quick else (200, 40.0)
    meta = {
        **host_meta(),
        "runtime": f"onnxruntime {version()} CPUExecutionProvider",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "mode": "quick" if args.quick else "full",
    }
    data = {
        "meta": meta,
        **measure_all(Settings(quick=args.quick, runs=runs, budget_s=budget), archs),
    }
    write_results(args.out, args.name, data, render(data))
    plot_speedups(Path(args.out) / f"{args.name}.png", data["speedup"])


if __name__ == "__main__":
    main()
