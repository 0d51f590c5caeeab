"""What REPORT.md is built from: the result files as runs, the newest run per
configuration, and a section's lines with the runs its figures cite (report.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from timing import IDEAL_SHARE_TARGET

# a result file belongs to the benchmark script its name starts with (``--name``'s default)
BENCHMARKS = (
    "accuracy",
    "bench_spread",
    "ceiling",
    "export_time",
    "finetune_methods",
    "fuzz",
    "kernels_ab",
    "latency_model",
    "mutation",
    "reproduce",
    "speedup",
    "switch_cost",
    "train_step",
    "xnnpack",
)
COMPANIONS = (".json", ".md", ".png")  # what one run of a script writes
ARCH_ORDER = {"deit_tiny": 0, "deit_small": 1, "deit_base": 2}
T = TypeVar("T")


@dataclass(kw_only=True, frozen=True)
class Run:
    """One results file of one benchmark script: its meta and data, and its files."""

    name: str  # the file stem
    benchmark: str
    meta: dict
    data: dict
    files: tuple[str, ...]  # the stem's .json and whichever of .md, .png exist

    @property
    def date(self) -> str:
        return str(self.meta.get("date", ""))

    @property
    def label(self) -> str:
        """How the report names the run: its script and the time it recorded."""
        when = self.date[:19].replace("T", " ")
        return f"{self.benchmark} {when}" if when else self.name

    @property
    def threads(self) -> str | None:
        """The thread counts the run records: in its meta, else on its rows."""
        if self.meta.get("threads") is not None:
            return str(self.meta["threads"])
        seen = {
            r["threads"]
            for rows in self.data.values()
            if isinstance(rows, list)
            for r in rows
            if isinstance(r, dict) and "threads" in r
        }
        return ", ".join(map(str, sorted(seen))) or None


def benchmark_of(stem: str) -> str | None:
    hits = [b for b in BENCHMARKS if stem == b or stem.startswith(b + "_")]
    return max(hits, key=len) if hits else None


def load_runs(results: Path) -> dict[str, list[Run]]:
    """Every ``<stem>.json`` of ``results`` whose stem names a benchmark, by benchmark."""
    runs: dict[str, list[Run]] = {b: [] for b in BENCHMARKS}
    for path in sorted(results.glob("*.json")):
        bench = benchmark_of(path.stem)
        if bench is None:
            continue
        data = json.loads(path.read_text())
        files = tuple(path.stem + s for s in COMPANIONS if (results / (path.stem + s)).exists())
        runs[bench].append(
            Run(name=path.stem, benchmark=bench, meta=data.get("meta", {}), data=data, files=files)
        )
    return runs


def newest(
    items: Iterable[tuple[Run, T]], key: Callable[[Run, T], Hashable]
) -> list[tuple[Run, T]]:
    """Per configuration (``key``), the item of the newest run (by its recorded date; by
    name where two dates are equal). Nothing is averaged."""
    best: dict[Hashable, tuple[Run, T]] = {}
    for run, item in items:
        k = key(run, item)
        if k not in best or (run.date, run.name) > (best[k][0].date, best[k][0].name):
            best[k] = (run, item)
    return list(best.values())


def spec_order(spec: str) -> tuple:
    arch, _, method = spec.partition(":")
    return (ARCH_ORDER.get(arch, len(ARCH_ORDER)), arch, method)


def times(x: float) -> str:
    return f"{x:.3f}×"


def share(speedup: float, ratio: float) -> str:
    """speedup / GFLOPs ratio, ✗ below the target share."""
    s = speedup / ratio
    return f"{s:.1%}" + ("" if s >= IDEAL_SHARE_TARGET else " ✗")


def signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.1%}"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A markdown table; a sentence saying so where there are no rows."""
    body = ["| " + " | ".join(r) + " |" for r in rows]
    if not body:
        return ["No result file covers this."]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *body]


def machine(meta: dict) -> str:
    parts = [str(meta.get("machine") or "not recorded")]
    parts += [str(meta["cpu"])] if meta.get("cpu") else []
    parts += [f"{meta['cores']} cores"] if meta.get("cores") else []
    return ", ".join(parts)


def software(meta: dict) -> str:
    parts = [str(meta["runtime"])] if meta.get("runtime") else []
    parts += [f"torch {meta['torch']}"] if meta.get("torch") else []
    parts += [f"Python {meta['python']}"] if meta.get("python") else []
    return ", ".join(parts) or "not recorded"


def not_recorded(run: Run) -> str:
    missing = [k for k in ("cpu", "cores", "python") if not run.meta.get(k)]
    missing += ["threads"] if run.threads is None else []
    return ", ".join(missing)


@dataclass
class Section:
    """One section of the report: its lines and the runs its figures link to."""

    title: str
    lines: list[str] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)

    def cite(self, run: Run) -> str:
        """A link to ``run``'s results file; the run joins the section's list of runs."""
        self.runs[run.name] = run
        return f"[{run.label}]({run.name}.json)"

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def render(self) -> list[str]:
        out = [f"## {self.title}", "", *self.lines]
        if not self.runs:
            return out
        out += ["", "Runs cited in this section, and the machine each recorded:", ""]
        rows = [
            [
                r.label,
                " · ".join(f"[{Path(f).suffix[1:]}]({f})" for f in r.files),
                machine(r.meta),
                software(r.meta),
                r.threads or "",
                not_recorded(r),
            ]
            for r in sorted(self.runs.values(), key=lambda r: (r.date, r.name))
        ]
        header = ["run (UTC)", "files", "machine", "software", "threads", "not recorded"]
        return out + table(header, rows)
