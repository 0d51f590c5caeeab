"""``bench --ops``'s text: the per-operator profile as plain lines that fit 80 columns
(per group: ms, share, nodes, the dense model beside; then the op kinds that take the
most time). Reads a ``profiling.bench_ops.OpsResult``; computes nothing."""

from __future__ import annotations

import textwrap

from rich.markup import escape

WIDTH = 80
TOP_KINDS = 10
_NAME = 20  # the first column; longer names are cut with "…"


def _cut(name: str, width: int = _NAME) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _wrap(text: str) -> list[str]:
    """A sentence over as many lines of at most 80 columns as it needs."""
    return textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)


def _cells(row) -> str:
    """ms, share, nodes of one row (``profiling.ops.Row``), or blanks."""
    if row is None:
        return f"{'—':>8} {'':>6} {'':>5}"
    return f"{row.ms:8.3f} {row.share * 100:5.1f}% {row.nodes:5d}"


def _table(title: str, rows, beside: dict | None) -> list[str]:
    """One section: a header, then a line per row, the baseline's row beside it."""
    head = f"{title:<{_NAME}} {'ms':>8} {'share':>6} {'nodes':>5}"
    if beside is not None:
        head += f"   {'dense ms':>8} {'share':>6} {'nodes':>5}"
    out = [head]
    for r in rows:
        line = f"{_cut(r.name):<{_NAME}} {_cells(r)}"
        if beside is not None:
            line += f"   {_cells(beside.get(r.name))}"
        out.append(line)
    return out


def _totals(p, d) -> list[str]:
    """The node total (and the runtime's own time per run beyond it, where it gives one)."""
    line = (
        f"{'all nodes':<{_NAME}} {p.node_ms:8.3f} {100.0:5.1f}% {sum(r.nodes for r in p.blocks):5d}"
    )
    if d is not None:
        line += f"   {d.node_ms:8.3f} {100.0:5.1f}% {sum(r.nodes for r in d.blocks):5d}"
    out = [line]
    if p.outside_ms is not None:
        run = f"outside the nodes: {p.outside_ms:.3f} ms per run"
        if d is not None and d.outside_ms is not None:
            run += f" (dense {d.outside_ms:.3f} ms)"
        out += _wrap(run + ", the session's own work (profiler on; median over the runs)")
    return out


def ops_lines(res) -> list[str]:
    """The whole ``bench --ops`` text, every line at most 80 columns."""
    out = [line for n in res.notes for line in _wrap(n)]
    if res.counts is not None:
        out += count_lines(res.counts)
    p, d = res.profile, res.baseline
    if p is None:
        return [escape(line) for line in out]
    threads = f", {p.threads} thread{'s' if p.threads != 1 else ''}" if p.threads else ""
    out += _wrap(f"per-operator profile of {p.model} ({p.source}{threads}, {p.runs} runs)")
    if res.baseline_from:
        out += _wrap(f"beside it: {res.baseline_from}")
    out.append("")
    beside = {r.name: r for r in d.blocks} if d is not None else None
    out += _table("group", p.blocks, beside)
    if beside is not None:  # groups only the dense model has
        out += [
            f"{_cut(r.name):<{_NAME}} {_cells(None)}   {_cells(r)}"
            for r in d.blocks
            if r.name not in {x.name for x in p.blocks}
        ]
    out += _totals(p, d)
    out.append("")
    kinds = {r.name: r for r in d.kinds} if d is not None else None
    out += _table("op kind", p.kinds[:TOP_KINDS], kinds)
    if len(p.kinds) > TOP_KINDS:
        out.append(f"(and {len(p.kinds) - TOP_KINDS} more kinds: --json or --ops-out)")
    out += [line for n in p.notes for line in _wrap(f"note: {n}")]
    return [escape(line) for line in out]


def count_lines(counts: dict) -> list[str]:
    """An ExecuTorch program's delegate counts from its manifest, said to be counts."""
    outside = counts.get("ops_outside_delegates") or {}
    n_out = sum(outside.values())
    lines = [
        f"counts, not times: {counts['ops_in_delegates']} ops in "
        f"{counts['delegate_segments']} XNNPACK delegate segments, {n_out} ops outside them"
    ]
    if outside:
        parts = ", ".join(f"{k} ×{v}" for k, v in sorted(outside.items(), key=lambda kv: -kv[1]))
        lines += _wrap(f"outside the delegates: {parts}")
    return lines
