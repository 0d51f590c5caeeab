"""The PNGs edgeprune writes (matplotlib, imported lazily, set up in ``_pyplot`` only):
a latency table's curves, a budget's Pareto front (latency, or accuracy with
``--sensitivity``), validate-profile's scatter. Like ``tables``, it reads the results
it is given and imports no job."""

from __future__ import annotations

from pathlib import Path

from edgeprune.core.atomic import atomic_path


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int | None = None) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi or "figure")
    _pyplot().close(fig)
    return path


def plot_table(table, path: Path) -> Path:
    """``table``: a ``latency.table.LatencyTable``."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.5), dpi=110)
    curves = {"block": table.block, "attn": table.attn, "mlp": table.mlp}
    curves.update({f"selector ({k})": v for k, v in table.selectors.items()})
    for name, c in curves.items():
        if c is not None:
            ax.plot(c.tokens, c.median_ms, marker="o", ms=3, label=f"{name} median")
            if name == "block":
                ax.fill_between(c.tokens, c.median_ms, c.p90_ms, alpha=0.2, label="block p50–p90")
    dev = table.device
    ax.set_title(
        f"{table.arch.name} on {dev['name']} ({dev['runtime']} {dev.get('runtime_version', '')}, "
        f"{dev.get('precision', '')}, {dev['threads']} threads, batch {table.batch})",
        fontsize=9,
    )
    ax.set_xlabel("tokens")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(
        0.01,
        0.01,
        f"embed {table.embed.median_ms:.3f} ms · head {table.head.median_ms:.3f} ms",
        fontsize=7,
    )
    fig.tight_layout()
    return _save(fig, path)


def _candidates_and_front(ax, result, color: str, label: str) -> None:
    """A budget search's candidates (at most ~4000 drawn) and their Pareto front."""
    cands = result.candidates
    step = max(1, len(cands) // 4000)
    ax.scatter(
        [c.predicted_ms for c in cands[::step]],
        [c.objective() for c in cands[::step]],
        s=4,
        c=color,
        label=label,
    )
    front = result.front
    ax.plot(
        [c.predicted_ms for c in front], [c.objective() for c in front], "-", c="C0",
        label="Pareto front",
    )  # fmt: skip


def _chosen(ax, chosen, size: int, label: str) -> None:
    """The chosen schedule: a red star at its predicted latency and objective."""
    ax.plot([chosen.predicted_ms], [chosen.objective()], "*", c="C3", ms=size, label=label)


def _target_line(ax, result) -> None:
    """The target, where the table's predictions meet it (÷ the re-anchoring scale)."""
    t, k = result.target_ms, result.scale
    at = f" (÷ {k:.3f} re-anchored: {t / k:.2f} ms in the table)" if k != 1.0 else ""
    ax.axvline(t / k, ls="--", c="C2", label=f"target {t:.2f} ms{at}")


def plot_pareto(result, path: Path) -> None:
    """The candidates, their Pareto front, the chosen schedule, target and dense
    (``result``: a ``budget.search.BudgetResult``)."""
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    _candidates_and_front(ax, result, "0.75", f"{result.schedule} schedules")
    ch = result.chosen
    if ch.r_schedule is not None:  # ToMe
        ratios = "r [" + ", ".join(map(str, ch.r_schedule)) + "]"
    else:
        ratios = "[" + ", ".join(f"{r:.4g}" for r in ch.keep_ratios) + "]"
    _chosen(ax, ch, 14, f"chosen {ratios}: {ch.predicted_ms:.2f} ms")
    _target_line(ax, result)
    ax.axvline(result.dense_ms, ls=":", c="0.4", label=f"dense {result.dense_ms:.2f} ms")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(result.objective.replace("_", " "))
    where = "r per block" if ch.r_schedule is not None else f"locs {list(result.locs)}"
    ax.set_title(f"{result.arch.name} / {result.method}, {where}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path, dpi=110)


def plot_validation(report, path: Path) -> None:
    """Predicted vs measured per schedule, with the ±5 % band (``report``: a
    ``profiling.validate.ValidationReport``)."""
    meas = [r.measured_ms for r in report.results]
    pred = [r.predicted_ms for r in report.results]
    lo, hi = min(meas + pred) * 0.9, max(meas + pred) * 1.1
    fig, ax = _pyplot().subplots(figsize=(5, 5))
    ax.plot([lo, hi], [lo, hi], "-", c="0.5", lw=1, label="pred = meas")
    ax.fill_between(
        [lo, hi],
        [lo * 0.95, hi * 0.95],
        [lo * 1.05, hi * 1.05],
        color="C2",
        alpha=0.15,
        label="±5 %",
    )
    ax.scatter(meas, pred, c="C0", s=18, zorder=3)
    ax.set_xlabel("measured end-to-end (ms, median)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(
        f"{report.method}: median err {report.median_error:.1%}, p90 {report.p90_error:.1%}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=110)


def plot_accuracy_pareto(result, sens, model, path: Path, measured_points=None) -> Path:
    """Predicted accuracy vs predicted latency of every searched schedule, the Pareto
    front, the chosen point (named), the target, and — from the sensitivity file — the
    measured single-stage schedules at their predicted latency."""

    fig, ax = _pyplot().subplots(figsize=(7.5, 4.8))
    _candidates_and_front(ax, result, "0.78", f"{result.schedule} schedules (additive model)")
    for i, (loc, lat, acc) in enumerate(measured_points or []):
        ax.plot(lat, acc, "o-", ms=4, c=f"C{(i % 6) + 4}", label=f"measured, stage {loc} alone")
    ch = result.chosen
    name = (
        "dense" if not ch.keep_ratios else "[" + ", ".join(f"{r:.3g}" for r in ch.keep_ratios) + "]"
    )
    if result.extrapolated:  # below the measured keep ratios (budget --extrapolate)
        name += " EXTRAPOLATED"
    _chosen(ax, ch, 15, f"chosen {name}: {ch.predicted_ms:.2f} ms, {ch.objective():.2f}")
    ax.annotate(
        f"chosen {name}",
        (ch.predicted_ms, ch.objective()),
        textcoords="offset points",
        xytext=(-10, -18),
        ha="right",
        fontsize=8,
        color="C3",
    )
    _target_line(ax, result)
    ax.axvline(result.dense_ms, ls=":", c="0.4", label=f"dense {result.dense_ms:.2f} ms")
    ax.set_xlabel(f"predicted latency (ms), {model.table.device.get('name')}")
    ax.set_ylabel(f"{sens.metric} (%)")
    ax.set_title(
        f"{result.arch.name} / {result.method}, locs {list(result.locs)}: accuracy vs latency",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path, dpi=110)


OPS_KINDS = 8  # kinds drawn in their own colour; the rest as "other kinds"


def plot_ops(result, path: Path) -> Path:
    """``bench --ops --ops-out``: stacked bars per group (embed, blocks, selector, head),
    one colour per op kind, the pruned model's bar beside the dense one's (hatched)
    (``result``: a ``profiling.bench_ops.OpsResult``)."""
    p, d = result.profile, result.baseline
    models = [(p, "", p.model)] + ([(d, "//", d.model)] if d is not None else [])
    groups = [r.name for r in p.blocks]
    groups += [r.name for r in (d.blocks if d else []) if r.name not in groups]
    top = [k.name for k in p.kinds[:OPS_KINDS]]
    colours = {k: f"C{i}" for i, k in enumerate(top)}
    fig, ax = _pyplot().subplots(figsize=(max(7.0, 0.55 * len(groups) + 2), 4.5), dpi=110)
    width = 0.8 / len(models)
    for m, (prof, hatch, label) in enumerate(models):
        rows = {r.name: r for r in prof.blocks}
        for g, name in enumerate(groups):
            kinds = rows[name].kinds if name in rows else {}
            x = g - 0.4 + width * (m + 0.5)
            bottom = 0.0
            for kind in [*top, None]:
                ms = (
                    kinds.get(kind, 0.0)
                    if kind
                    else sum(v for k, v in kinds.items() if k not in top)
                )
                ax.bar(x, ms, width, bottom=bottom, color=colours.get(kind, "0.7"), hatch=hatch,
                       edgecolor="white", linewidth=0.3)  # fmt: skip
                bottom += ms
        ax.bar(0, 0, 0, color="white", edgecolor="0.3", hatch=hatch, label=label)
    for kind in top:
        ax.bar(0, 0, 0, color=colours[kind], label=kind)
    ax.bar(0, 0, 0, color="0.7", label="other kinds")
    ax.set_xticks(range(len(groups)), [g.replace("block ", "b") for g in groups], fontsize=8)
    ax.set_ylabel("ms per run")
    title = f"{p.model}: where the time goes ({p.source})"
    ax.set_title(title + (f", beside {d.model} (hatched)" if d else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)
