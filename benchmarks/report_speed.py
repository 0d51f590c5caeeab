"""REPORT.md's speedup section: dense vs pruned per runtime and thread count, beside the
GFLOPs ratio and the backbone's ceiling (results of speedup.py, xnnpack.py, ceiling.py,
kernels_ab.py, switch_cost.py and reproduce.py)."""

from __future__ import annotations

from dataclasses import dataclass

from report_data import Run, Section, newest, share, spec_order, table, times


@dataclass(kw_only=True, frozen=True)
class Speed:
    """One dense-vs-pruned comparison, whichever script measured it."""

    spec: str
    threads: int
    batch: int
    burst: int
    dense_ms: float
    pruned_ms: float
    speedup: float
    gflops_ratio: float
    row: dict  # the row as the script wrote it


def runtime_kind(meta: dict) -> str:
    return "onnxruntime" if str(meta.get("runtime", "")).startswith("onnxruntime") else "executorch"


def burst_of(run: Run) -> int:
    return int(run.meta.get("burst") or 1)


def timed_as(run: Run) -> tuple[str, int, int]:
    """How a run timed: runtime, threads, burst (a ceiling's configuration, less the model)."""
    return (runtime_kind(run.meta), int(run.meta.get("threads", 1)), burst_of(run))


def _speed(run: Run, r: dict, t: dict, *, burst: int) -> tuple[Run, Speed]:
    """A script's row ``r`` and the timings ``t`` of its pair (the row, or part of it)."""
    speedup = t["speedup"]["median"] if "speedup" in t else t["speedup_median"]
    return run, Speed(
        spec=r["spec"],
        threads=r["threads"],
        batch=r.get("batch", 1),
        burst=burst,
        dense_ms=t["dense_ms"]["median"],
        pruned_ms=t["pruned_ms"]["median"],
        speedup=speedup,
        gflops_ratio=r["gflops_ratio"],
        row=r,
    )


def ort_speeds(runs: dict[str, list[Run]]) -> list[tuple[Run, Speed]]:
    """ONNX Runtime pairs: speedup.py's rows (A B / B A: burst 1) and xnnpack.py's
    --onnxruntime column."""
    out = [_speed(run, r, r, burst=1) for run in runs["speedup"] for r in run.data["rows"]]
    out += [
        _speed(run, r, r["onnxruntime"], burst=burst_of(run))
        for run in runs["xnnpack"]
        for r in run.data["rows"]
        if "onnxruntime" in r
    ]
    return out


def xnnpack_speeds(runs: dict[str, list[Run]], kernels: bool) -> list[tuple[Run, Speed]]:
    """xnnpack.py's ExecuTorch pairs, of the runs exported with --custom-kernels or not."""
    return [
        _speed(run, r, r, burst=burst_of(run))
        for run in runs["xnnpack"]
        if bool(run.meta.get("custom_kernels")) == kernels
        for r in run.data["rows"]
    ]


def ceilings(runs: dict[str, list[Run]]) -> dict[tuple, tuple[Run, dict]]:
    """The newest ceiling per (runtime, threads, burst, spec)."""
    items = [
        (run, w) for run in runs["ceiling"] for arch in run.data["results"] for w in arch["rows"]
    ]
    picked = newest(items, lambda run, w: (*timed_as(run), w["spec"]))
    return {(*timed_as(run), w["spec"]): (run, w) for run, w in picked}


def ceiling_fits(sec: Section, runs: dict[str, list[Run]]) -> None:
    items = [(run, a) for run in runs["ceiling"] for a in run.data["results"]]
    picked = newest(items, lambda run, a: (*timed_as(run), a["arch"]))
    picked.sort(key=lambda p: (*timed_as(p[0]), spec_order(p[1]["arch"])))
    rows = [
        [
            "ONNX Runtime" if runtime_kind(run.meta) == "onnxruntime" else "ExecuTorch / XNNPACK",
            *map(str, timed_as(run)[1:]),
            a["arch"],
            f"{a['fixed_ms']:.2f} ms ({a['fixed_share_of_dense']:.1%})",
            f"{a['ms_per_gmac']:.2f}",
            f"{a['worst_fit_residual']:.1%}",
            sec.cite(run),
        ]
        for run, a in picked
    ]
    sec.add(
        "### The backbone's ceiling",
        "",
        "`ceiling.py` times the backbone alone (no selector) at uniform token counts and fits "
        "latency = a + b · GMACs. The best speedup a plan's backbone can reach with free "
        "selectors is then (a + b · G_dense) / (a + b · G_plan): the *ceiling* column below. "
        "Newest run per runtime, threads, burst and arch.",
        "",
        *table(
            [
                "runtime",
                "threads",
                "burst",
                "arch",
                "a (share of dense)",
                "b (ms/GMAC)",
                "worst fit residual",
                "run",
            ],
            rows,
        ),
        "",
    )


def _ceiling_cells(sec: Section, ceil: dict, kind: str, s: Speed) -> list[str]:
    hit = ceil.get((kind, s.threads, s.burst, s.spec))
    if hit is None:
        return ["—", ""]
    run, w = hit
    return [f"{times(w['fit_ceiling'])} ({w['fit_ceiling_share']:.1%})", sec.cite(run)]


def speed_rows(
    sec: Section, picked: list[tuple[Run, Speed]], ceil: dict, kind: str, extra=None
) -> tuple[list[list[str]], int]:
    """Table rows, sorted by threads, burst and model; and how many reach the target."""
    picked = sorted(
        picked, key=lambda p: (p[1].threads, p[1].burst, p[1].batch, spec_order(p[1].spec))
    )
    rows, met = [], 0
    for run, s in picked:
        cell = share(s.speedup, s.gflops_ratio)
        met += "✗" not in cell
        rows.append(
            [
                s.spec,
                str(s.threads),
                str(s.batch),
                str(s.burst),
                f"{s.dense_ms:.2f}",
                f"{s.pruned_ms:.2f}",
                times(s.speedup),
                times(s.gflops_ratio),
                cell,
                *_ceiling_cells(sec, ceil, kind, s),
                *(extra(s) if extra else []),
                sec.cite(run),
            ]
        )
    return rows, met


SPEED_HEADER = [
    "model",
    "threads",
    "batch",
    "burst",
    "dense ms",
    "pruned ms",
    "speedup",
    "GFLOPs ratio",
    "share",
    "ceiling (share)",
    "ceiling run",
]


def speed_table(sec: Section, title: str, text: str, picked, ceil: dict, *, kind: str, extra=None):
    rows, met = speed_rows(sec, picked, ceil, kind, extra[1] if extra else None)
    header = SPEED_HEADER + (extra[0] if extra else []) + ["run"]
    sec.add(
        f"### {title}",
        "",
        text,
        "",
        *table(header, rows),
        "",
        f"{met} of {len(rows)} rows reach 90 % of their GFLOPs ratio.",
        "",
    )


def _key(run: Run, s: Speed) -> tuple:
    return (s.spec, s.threads, s.batch, s.burst)


def _segments(s: Speed) -> list[str]:
    outside = s.row.get("outside") or {}
    return [str(s.row["segments"]["pruned"]), str(sum(outside.values()))]


def runtime_tables(sec: Section, runs: dict[str, list[Run]]) -> None:
    ceil = ceilings(runs)
    speed_table(
        sec,
        "ONNX Runtime",
        "speedup.py, and the ONNX Runtime column of `xnnpack.py --onnxruntime` (timed in the "
        "same process as the ExecuTorch programs). Newest run per model, threads, batch and burst.",
        newest(ort_speeds(runs), _key),
        ceil,
        kind="onnxruntime",
    )
    xnn = (["segments", "ops outside XNNPACK"], _segments)
    for kernels, title, text in (
        (
            False,
            "ExecuTorch / XNNPACK, graph form",
            "xnnpack.py, programs lowered as `export --target executorch` does. ",
        ),
        (
            True,
            "ExecuTorch / XNNPACK, exported with --custom-kernels",
            "`xnnpack.py --custom-kernels`: ToMe's merge is one edgeprune kernel; the other "
            "methods' programs are the same as in the graph form. ",
        ),
    ):
        speed_table(
            sec,
            title,
            text + "Newest run per model, threads, batch and burst.",
            newest(xnnpack_speeds(runs, kernels), _key),
            ceil,
            kind="executorch",
            extra=xnn,
        )


def kernels_ab(sec: Section, runs: dict[str, list[Run]]) -> None:
    items = [(run, r) for run in runs["kernels_ab"] for r in run.data["rows"]]
    picked = newest(items, lambda run, r: (r["spec"], r["threads"], burst_of(run)))
    picked.sort(key=lambda p: (burst_of(p[0]), spec_order(p[1]["spec"])))
    rows = []
    for run, r in picked:
        g = r["gflops_ratio"]
        for name in ("graph", "kernels"):
            p = r["programs"][name]
            warm = p.get("speedup_warm")
            rows.append(
                [
                    r["spec"],
                    str(r["threads"]),
                    str(burst_of(run)),
                    name,
                    str(p["xnnpack_ops"]),
                    str(sum(p["outside"].values())),
                    f"{times(p['speedup_first'])} ({share(p['speedup_first'], g)})",
                    "" if warm is None else f"{times(warm)} ({share(warm, g)})",
                    sec.cite(run),
                ]
            )
    sec.add(
        "### Graph form against --custom-kernels, in one process",
        "",
        "kernels_ab.py: dense, the graph form and the --custom-kernels form of one model take "
        "turns (A B C, B C A, …). *First*: a turn's first run, which follows another program; "
        "*warm*: the rest of a turn (burst > 1). Newest run per model, threads and burst.",
        "",
        *table(
            [
                "model",
                "threads",
                "burst",
                "program",
                "XNNPACK ops",
                "ops outside",
                "speedup, first runs (share)",
                "speedup, warm (share)",
                "run",
            ],
            rows,
        ),
        "",
    )


def first_vs_warm(sec: Section, runs: dict[str, list[Run]]) -> None:
    items = [
        (run, (spec, r))
        for run in runs["switch_cost"]
        for spec, r in run.data["rows"].items()
        if "speedup_first_runs" in r
    ]
    picked = newest(items, lambda run, sr: (sr[0], run.meta.get("threads"), burst_of(run)))
    picked.sort(key=lambda p: spec_order(p[1][0]))
    rows = [
        [
            spec,
            str(run.meta.get("threads", "")),
            str(burst_of(run)),
            f"{r['first_ms']:.2f}",
            f"{r['warm_ms']:.2f}",
            f"{r['switch_cost_us']['median']:.0f}",
            times(r["speedup_first_runs"]),
            times(r["speedup_warm_runs"]),
            times(r["gflops_ratio"]),
            sec.cite(run),
        ]
        for run, (spec, r) in picked
    ]
    sec.add(
        "### The first run after the other model (ExecuTorch / XNNPACK)",
        "",
        "switch_cost.py: dense and pruned take turns, each run `burst` times a turn; the "
        "first run of a turn follows the other model. Switch cost = first − warm, median "
        "per turn. Newest run per model, threads and burst.",
        "",
        *table(
            [
                "model",
                "threads",
                "burst",
                "pruned first ms",
                "pruned warm ms",
                "switch cost µs",
                "speedup from first runs",
                "from warm runs",
                "GFLOPs ratio",
                "run",
            ],
            rows,
        ),
        "",
    )


def default_schedules(sec: Section, runs: dict[str, list[Run]]) -> None:
    items = [(run, r) for run in runs["reproduce"] for r in run.data.get("speedup", [])]
    picked = newest(items, lambda run, r: (r["spec"], r.get("batch"), r.get("threads")))
    picked.sort(
        key=lambda p: (p[1].get("batch", 0), p[1].get("threads", 0), spec_order(p[1]["spec"]))
    )
    rows = []
    for run, r in picked:
        if "refused" in r:
            rows.append(
                [
                    r["spec"],
                    "",
                    "",
                    f"export refused: {r['refused']}",
                    "",
                    "",
                    "",
                    "",
                    sec.cite(run),
                ]
            )
            continue
        rows.append(
            [
                r["spec"],
                str(r["batch"]),
                str(r["threads"]),
                f"{r['dense_ms']['median']:.2f}",
                f"{r['pruned_ms']['median']:.2f}",
                times(r["speedup"]["median"]),
                times(r["gflops_ratio"]),
                share(r["speedup"]["median"], r["gflops_ratio"]),
                sec.cite(run),
            ]
        )
    sec.add(
        "### ONNX Runtime at each method's default schedule, batch 1 and 8",
        "",
        "reproduce.py: every method at the schedule its spec gives by default. Newest run per "
        "model, batch and threads.",
        "",
        *table(
            [
                "model",
                "batch",
                "threads",
                "dense ms",
                "pruned ms",
                "speedup",
                "GFLOPs ratio",
                "share",
                "run",
            ],
            rows,
        ),
        "",
    )


def speedups(runs: dict[str, list[Run]]) -> Section:
    sec = Section("2. Speedups per runtime and thread count")
    sec.add(
        "Speedup: dense latency / pruned latency, the median of per-pair ratios of runs "
        "interleaved in one process, batch 1 unless said. *Share*: speedup / GFLOPs ratio "
        "(selectors' GFLOPs included), ✗ below 90 %. *Burst*: runs of a model back to back "
        "per turn, the first dropped (1: every run follows the other model). Latencies are "
        "medians in ms.",
        "",
    )
    ceiling_fits(sec, runs)
    runtime_tables(sec, runs)
    kernels_ab(sec, runs)
    first_vs_warm(sec, runs)
    default_schedules(sec, runs)
    return sec
