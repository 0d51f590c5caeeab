"""How the CLI shows results: rich tables and summary lines built from library results
(the CLI prints them; nothing here computes or decides)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from edgeprune.measure import ProfileOutcome


def devices_table(rows: list[dict]) -> Table:
    t = Table(title="devices", title_justify="left")
    for col in ("name", "runtime", "precision", "threads", "reach", "reachable", "why"):
        t.add_column(col)
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        reach = r["transport"] if r["transport"] == "local" else f"{r['transport']} {r['host']}"
        t.add_row(
            name,
            r["runtime"],
            r["precision"],
            str(r["threads"] or "all"),
            reach,
            "[green]yes[/]" if r["reachable"] else "[red]no[/]",
            r["why"],
        )
    return t


def profile_lines(res: ProfileOutcome) -> list[str]:
    from edgeprune.measure import summary

    table, d, s = res.table, res.table.device, summary(res.table)
    lines = [
        f"[green]wrote[/] {res.path}{f' and {res.plot}' if res.plot else ''}  "
        f"({res.seconds:.0f} s; {d['runtime']} {d.get('runtime_version', '')}, "
        f"{d.get('precision', '')}, {d['threads']} threads, batch {table.batch}, "
        f"host {d.get('host', 'local')})",
        f"block @ {s['tokens']} tokens: {s['block_ms']:.3f} ms median; embed "
        f"{s['embed_ms']:.3f} ms; head {s['head_ms']:.3f} ms",
    ]
    if "interp_max_rel_err" in s:
        lines.append(
            f"interpolation check: max error {s['interp_max_rel_err']:.1%} over "
            f"{s['interp_points']} off-grid points"
        )
    if "e2e" in s:
        e = s["e2e"]
        lines.append(
            f"end-to-end: {e['anchors']} whole models; predicted = {e['offset_ms']:+.3f} ms + "
            f"{e['scale']:.3f} × pieces (anchors within {e['worst_rel_err']:.1%})"
        )
    return lines
