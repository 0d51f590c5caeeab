"""How far repeated ``edgeprune bench`` runs of one artifact agree, quiet and busy.

    python benchmarks/bench_spread.py [--artifact deit_tiny.pte] [--repeats 10]
        [--threads N] [--load-end 5] [--wait-quiet 60] [--name bench_spread]

Runs ``edgeprune bench ARTIFACT --json`` ``--repeats`` times, each in a fresh process, in
three settings, and reports per setting the medians, their spread ((max − min) / median
of the medians; the goal on a quiet machine is ≤ 2 %), the 95 % intervals' half-widths,
how many runs converged within the tolerance and how many warned of a busy machine:

- quiet: the machine as it is (run it on a quiet one: the script says what it found);
- load: a CPU-burning process per core (made here, bounded, killed afterwards) throughout;
- wait-quiet: the same load, ended ``--load-end`` s after each bench started, which is
  given ``--wait-quiet``: it should wait the load out, then measure as on a quiet machine.

With the quiet setting, each bench is followed by a *reference*: a fixed workload with
no edgeprune in it (a 256×256 float32 matmul loop in numpy, one thread, a fresh process,
pinned as the bench is, timed for as long as a bench measures). Its spread is the
machine's own from one process to the next: a bench cannot be steadier than that.

Without ``--artifact`` a ``deit_tiny`` ExecuTorch program (random weights) is exported to
a temporary folder first. Writes benchmarks/results/<name>.json and .md. Not part of the
test run; never run it beside other work unless that is what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from timing import host_meta, write_results  # noqa: E402

from edgeprune.runtimes.conditions import (  # noqa: E402
    OTHERS_MAX_PCT,
    others_pct,
    parse_cpus,
    read_ticks,
)

SPREAD_GOAL = 0.02  # (max − min) / median of the repeated medians, on a quiet machine
REFERENCE = """
import os, statistics, sys, time
import numpy as np
if {cpus!r}:
    os.sched_setaffinity(0, {cpus!r})
a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
times, end = [], time.monotonic() + {seconds}
while time.monotonic() < end:
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    times.append(time.perf_counter() - t)
print(statistics.median(times) * 1e3, len(times))
"""
BURN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def cpu_load(seconds: float):
    """One CPU-burning process per core, each ending by itself after ``seconds``; all
    killed on the way out."""
    procs = []
    try:
        for _ in range(os.cpu_count() or 1):
            procs.append(subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)]))
        time.sleep(0.5)
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def export_default(folder: Path) -> Path:
    out = folder / "deit_tiny.pte"
    argv = ["export", "deit_tiny", "--target", "executorch", "--parity-inputs", "2"]
    subprocess.run([sys.executable, "-m", "edgeprune", *argv, "-o", str(out)], check=True)
    return out


def bench_once(artifact: Path, extra: list[str]) -> dict:
    """One ``edgeprune bench --json`` in a fresh process: its JSON, and its warning line."""
    argv = [sys.executable, "-m", "edgeprune", "bench", str(artifact), "--json", *extra]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"bench failed ({res.returncode}): {res.stderr.strip()}")
    d = json.loads(res.stdout.strip().splitlines()[-1])
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    c = d.get("extra", {}).get("conditions", {})
    return {
        "median_ms": d["median_ms"],
        "ci_low_ms": d.get("ci_low_ms"),
        "ci_high_ms": d.get("ci_high_ms"),
        "ci_halfwidth": d.get("ci_halfwidth"),
        "converged": d.get("converged"),
        "runs": d["runs"],
        "threads": d.get("threads"),
        "others_cpu_pct": c.get("others_cpu_pct"),
        "load_before": c.get("load_before"),
        "waited_s": (c.get("wait") or {}).get("waited_s"),
        "warning": warnings[0] if warnings else None,
    }


def reference_once(args) -> dict:
    """The reference workload (``REFERENCE``) in a fresh process, one thread."""
    cpus = sorted(parse_cpus(args.pin)) if args.pin else []
    code = REFERENCE.format(cpus=cpus, seconds=args.max_time)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"reference failed ({res.returncode}): {res.stderr.strip()}")
    median_ms, runs = res.stdout.split()
    return {"median_ms": float(median_ms), "runs": int(runs), "ci_halfwidth": None,
            "converged": None, "warning": None}  # fmt: skip


def bench_after_load(artifact: Path, args, extra: list[str]) -> dict:
    """``bench --wait-quiet`` started under the load, which ends ``args.load_end`` s later."""
    with cpu_load(args.load_end + 5) as procs:
        stop = threading.Timer(args.load_end, lambda: [p.kill() for p in procs])
        stop.start()
        try:
            return bench_once(artifact, [*extra, "--wait-quiet", f"{args.wait_quiet:g}"])
        finally:
            stop.cancel()


def run_setting(
    name: str, artifact: Path, args, extra: list[str], refs: list[dict] | None = None
) -> list[dict]:
    """``args.repeats`` benches in one setting (quiet, load, wait-quiet); quiet ones each
    followed by the reference workload, appended to ``refs`` (unless None)."""
    rows = []
    for i in range(args.repeats):
        if name == "quiet":
            rows.append(bench_once(artifact, extra))
            if refs is not None:
                refs.append(reference_once(args))
        elif name == "load":
            with cpu_load(args.max_time + 60):
                rows.append(bench_once(artifact, extra))
        else:
            rows.append(bench_after_load(artifact, args, extra))
        r = rows[-1]
        print(f"{name} {i + 1}/{args.repeats}: {r['median_ms']:.3f} ms, {r['runs']} runs, "
              f"{r['warning'] or 'no warning'}", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> dict:
    medians = [r["median_ms"] for r in rows]
    mid = statistics.median(medians)
    widths = [r["ci_halfwidth"] for r in rows if r["ci_halfwidth"] is not None]
    return {
        "median_of_medians_ms": mid,
        "spread": (max(medians) - min(medians)) / mid if mid > 0 else None,
        "ci_halfwidth_median": statistics.median(widths) if widths else None,
        "converged": sum(bool(r["converged"]) for r in rows),
        "warned": sum(r["warning"] is not None for r in rows),
        "reference": rows[0]["converged"] is None,
        "repeats": len(rows),
    }


def report_lines(data: dict) -> list[str]:
    m = data["meta"]
    lines = [
        "# bench: spread of repeated runs",
        "",
        f"{m['artifact']}, {m['repeats']} fresh `edgeprune bench` processes per setting, "
        f"{m['cores']} cores ({m['cpu']}), {m['date']}; before: others used "
        f"{m['others_at_start_pct']} % CPU. Spread = (max − min) / median of the medians; "
        f"goal on a quiet machine ≤ {SPREAD_GOAL:.0%}.",
        "",
        "| setting | median of medians | spread | median CI ± | converged | warned |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in data["summary"].items():
        ci = "—" if s["ci_halfwidth_median"] is None else f"{s['ci_halfwidth_median']:.1%}"
        counts = (
            "— | —"
            if s.get("reference")
            else f"{s['converged']}/{s['repeats']} | {s['warned']}/{s['repeats']}"
        )
        lines.append(
            f"| {name} | {s['median_of_medians_ms']:.3f} ms | {s['spread']:.1%} | {ci} | {counts} |"
        )
    if "reference" in data["summary"]:
        lines += [
            "",
            "reference: a numpy matmul loop (no edgeprune), a fresh process after each quiet "
            "bench, timed as long: the machine's own spread from one process to the next.",
        ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifact", type=Path, help="(default: export deit_tiny to a .pte)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, help="bench --threads (default: the device's)")
    ap.add_argument("--max-time", type=float, default=10.0, help="bench --max-time (s)")
    ap.add_argument("--load-end", type=float, default=5.0, help="wait-quiet: load ends (s)")
    ap.add_argument("--wait-quiet", type=float, default=60.0, help="bench --wait-quiet (s)")
    ap.add_argument("--pin", help="bench --pin CPUS (default: not pinned)")
    ap.add_argument("--settings", default="quiet,load,wait-quiet")
    ap.add_argument("--no-reference", action="store_true", help="quiet: no reference runs")
    ap.add_argument("--name", default="bench_spread")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    extra = ["--max-time", f"{args.max_time:g}"]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    if args.pin:
        extra += ["--pin", args.pin]
    before = read_ticks()
    time.sleep(1.0)
    others = others_pct(before, read_ticks())
    if others is not None and others > OTHERS_MAX_PCT:
        print(f"note: others use {others:.0f} % CPU now: not a quiet machine", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or export_default(Path(tmp))
        refs = None if args.no_reference else []
        rows = {s: run_setting(s, artifact, args, extra, refs) for s in args.settings.split(",")}
        if refs:
            rows["reference"] = refs
    meta = host_meta() | {
        "artifact": str(args.artifact or "deit_tiny.pte (random weights)"),
        "repeats": args.repeats,
        "bench_args": extra,
        "others_at_start_pct": others,
        "load_end_s": args.load_end,
        "wait_quiet_s": args.wait_quiet,
    }
    data = {"meta": meta, "summary": {s: summarize(r) for s, r in rows.items()}, "runs": rows}
    write_results(args.out, args.name, data, report_lines(data))


if __name__ == "__main__":
    main()
