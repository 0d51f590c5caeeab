"""Does the latency model hold when measured? (issue #14's benchmark criteria)

    python benchmarks/latency_model.py [--archs deit_tiny,deit_small] [--threads 1,2]
                                       [--method dynamicvit] [--configs 20]
                                       [--fractions 0.5,0.55,0.6,0.65,0.7] [--name N]

For every arch and thread count, exactly what a user runs, through the CLI:

1. ``edgeprune profile --device cpu --arch A --method M --threads T`` (the latency table);
2. ``edgeprune validate-profile`` with ``--configs`` random schedules, each exported and
   timed interleaved against dense (median / p90 / worst relative error);
3. ``edgeprune budget --verify`` at each fraction of the table's dense prediction: the
   chosen schedule is exported and timed against dense; measured vs target.

Writes benchmarks/results/<name>.json and <name>.md (default latency_model) (tables for the report).
Not part of the test run; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import host_meta, write_results


def cli(*args: str) -> tuple[int, dict]:
    """Run ``edgeprune ARGS --json``; (exit code, the JSON object it printed)."""
    p = subprocess.run(
        [sys.executable, "-m", "edgeprune", *args, "--json"], capture_output=True, text=True
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"edgeprune {' '.join(args)} failed ({p.returncode}): {p.stderr[-800:]}")
    return p.returncode, json.loads(lines[-1])


def run_one(arch: str, threads: int, args, work: Path) -> dict:
    table = work / f"{arch}_{args.method}_t{threads}.json"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgeprune", "profile", "--device", "cpu", "--arch", arch,
         "--method", args.method, "--threads", str(threads), "-o", str(table), "--force",
         "--no-plot"],
        check=True, capture_output=True,
    )  # fmt: skip
    profile_s = time.perf_counter() - t0
    extra = json.loads(table.read_text()).get("extra", {})
    _, val = cli(
        "validate-profile", str(table), "--configs", str(args.configs),
        "--plot", str(work / f"{table.stem}.validate.png"), "--force",
    )  # fmt: skip
    errors = [abs(r["rel_error"]) for r in val["results"]]
    dense_pred = cli("predict", arch, "-p", str(table))[1]["predicted_ms"]
    budgets = []
    for f in args.fractions:
        target = round(f * dense_pred, 2)
        try:
            rc, b = cli(
                "budget", "-p", str(table), "--target-ms", str(target), "--verify", "--no-plot",
                "-o", str(work / f"{table.stem}_b{f}.json"), "--force",
            )  # fmt: skip
        except SystemExit as e:  # e.g. unreachable once re-anchored: recorded, run goes on
            budgets.append({"fraction": f, "target_ms": target, "error": str(e)[-300:]})
            continue
        v = b.get("verification") or {}
        budgets.append({"fraction": f, "target_ms": target, "exit": rc, **v})
    return {
        "arch": arch,
        "threads": threads,
        "method": args.method,
        "profile_seconds": round(profile_s, 1),
        "noise": extra.get("noise"),
        "retimed": (extra.get("retimed") or {}).get("count"),
        "validate": {
            "configs": val["configs"],
            "median_rel_error": val["median_rel_error"],
            "p90_rel_error": val["p90_rel_error"],
            "max_rel_error": max(errors),
            "within_10pct": sum(e <= 0.10 for e in errors),
            "drift": val.get("drift"),
            "drift_corrected": val.get("drift_corrected"),
            "results": val["results"],
            "noise": val.get("noise"),
        },
        "budgets": budgets,
    }


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def _spread(row: dict) -> str:
    n = row.get("noise") or {}
    return "" if "median_spread" not in n else f"{n['median_spread']:.1%}"


def _corrected(v: dict) -> str:
    dc = v.get("drift_corrected")
    return "" if not dc else f"{dc['median_rel_error']:.1%} / {dc['p90_rel_error']:.1%}"


def render(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Latency model: validate-profile and budget --verify (onnxruntime CPU, batch 1)",
        "",
        f"{meta['runtime']}, {meta['machine']}, {meta['date']}. Method: {meta['method']}.",
        "",
        "| profile | threads | profile noise (median spread) | schedules | median error "
        "| p90 error | worst | within ±10% | drift since profiling | error with the drift "
        "taken out (median / p90) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = r["validate"]
        lines.append(
            f"| {r['arch']}/{r['method']} | {r['threads']} | {_spread(r)} | {v['configs']} | "
            f"{v['median_rel_error']:.1%} | {v['p90_rel_error']:.1%} | {v['max_rel_error']:.1%} | "
            f"{v['within_10pct']}/{v['configs']} | {_pct(v.get('drift'))} | {_corrected(v)} |"
        )
    lines += [
        "",
        "| profile | threads | target (× dense) | target ms | re-anchor scale | predicted ms "
        "(re-anchored) | measured ms | measured vs target | met | machine moved during the "
        "check | at the re-anchor's speed vs target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for b in r["budgets"]:
            vt = b.get("vs_target")
            scale = (b.get("reanchor") or {}).get("scale")
            lines.append(
                f"| {r['arch']}/{r['method']} | {r['threads']} | {b['fraction']:.2f} | "
                f"{b['target_ms']:.2f} | {'' if scale is None else f'{scale:.3f}'} | "
                f"{b.get('predicted_ms', float('nan')):.2f} | "
                f"{b.get('measured_ms', float('nan')):.2f} | "
                f"{'' if vt is None else f'{vt:+.1%}'} | {'yes' if b.get('met') else 'no'} | "
                f"{_pct(b.get('moved'))} | {_pct(b.get('at_anchor_vs_target'))} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--archs", default="deit_tiny,deit_small")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--method", default="dynamicvit")
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--fractions", default="0.5,0.55,0.6,0.65,0.7")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="latency_model", help="results file name (no suffix)")
    args = ap.parse_args()
    args.fractions = [float(f) for f in args.fractions.split(",")]
    import onnxruntime

    meta = {
        **host_meta(),
        "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
        "python": platform.python_version(),
        "method": args.method,
    }
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for arch in args.archs.split(","):
            for th in (int(t) for t in args.threads.split(",")):
                r = run_one(arch, th, args, Path(td))
                rows.append(r)
                v = r["validate"]
                met = [b.get("vs_target") for b in r["budgets"]]
                print(
                    f"{arch} t={th}: median {v['median_rel_error']:.1%} p90 "
                    f"{v['p90_rel_error']:.1%} worst {v['max_rel_error']:.1%}; budgets vs target "
                    + ", ".join("?" if m is None else f"{m:+.1%}" for m in met),
                    flush=True,
                )
    write_results(args.out, args.name, {"meta": meta, "rows": rows}, [render(meta, rows)])


if __name__ == "__main__":
    main()
