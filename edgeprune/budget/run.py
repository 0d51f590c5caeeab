"""``edgeprune budget``: search a keep schedule for a target on a latency table, write
the budget file (``budget_file``) and its plot, and with ``--verify`` measure the
choice (``verify``). Above the file format, so that ``source`` (which reads budget
files) never imports the search's orchestration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from edgeprune.budget.file import budget_dict
from edgeprune.budget.search import (
    BudgetResult,
    Sensitivity,
    UnreachableTarget,
    chosen_summary,
    load_sensitivity,
    measured_curves,
    resolve_margin,
    search,
    target_from,
)
from edgeprune.budget.verify import Verification, verify_budget
from edgeprune.core.atomic import check_writable_target, write_json_atomic
from edgeprune.core.parsing import parse_ints
from edgeprune.latency.model import LatencyModel, load_model
from edgeprune.render.plots import plot_accuracy_pareto, plot_pareto


@dataclass
class BudgetRun:
    """What ``edgeprune budget`` made: the search result, the file's data, where."""

    result: BudgetResult
    data: dict
    model: LatencyModel
    path: Path
    plot: Path | None
    metric: str | None  # the sensitivity file's metric (None: kept tokens)
    sensitivity: Sensitivity | None = None
    verification: Verification | None = None  # budget --verify

    @property
    def chosen_summary(self) -> str | None:
        """``budget --sensitivity``: the line naming the chosen point on the front."""
        if self.sensitivity is None:
            return None
        return chosen_summary(self.result, self.sensitivity)


def make_budget(
    profile: Path,
    target_ms: float | None = None,
    target_fps: float | None = None,
    method: str | None = None,
    schedule: str = "geometric",
    locs: str | None = None,
    sensitivity: Path | None = None,
    out: Path = Path("budget.json"),
    plot: Path | None = None,
    no_plot: bool = False,
    force: bool = False,
    margin: str | None = "auto",
    verify: bool = False,
    rounds: int = 30,
    reanchor: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BudgetRun:
    """Search the keep schedule for a target on a latency table (aiming ``margin`` under
    it, see ``budget.resolve_margin``) and write the budget file (and, unless
    ``no_plot``, its Pareto plot, default ``<out>.pareto.png``; with a sensitivity file,
    predicted accuracy vs latency with the measured stage curves). With ``verify``, the
    chosen schedule is exported and timed against dense here first (``verify.py``), and,
    with ``reanchor``, chosen again on the table re-anchored to the machine's speed now
    (dense timed here first); the file holds the schedule verified and the
    verification."""

    target = target_from(target_ms, target_fps)
    model = load_model(profile)
    sens = load_sensitivity(sensitivity) if sensitivity is not None else None
    plot_path = None if no_plot else (plot or out.with_name(out.stem + ".pareto.png"))
    check_writable_target(out, force)
    if plot_path is not None:
        check_writable_target(plot_path, force)
    meth = method or model.table.method or "dynamicvit"
    frac, why = resolve_margin(margin, model.table)
    choose = partial(
        search, model, target, meth, schedule, parse_ints(locs, "--locs"), sens,
        str(sensitivity), margin=frac, margin_source=why,
    )  # fmt: skip
    try:
        res = choose()
    except UnreachableTarget:
        if not (verify and reanchor):
            raise
        res = None  # the machine may run faster now than the table says: re-anchoring decides
    checked = None
    if verify:
        res, checked = verify_budget(
            model, choose, res, rounds, reanchor=reanchor, progress=progress
        )
    data = budget_dict(res, model, profile)
    if checked is not None:
        data["verification"] = checked.to_dict()
    write_json_atomic(out, data)
    if plot_path is not None and sens is not None:
        plot_accuracy_pareto(res, sens, model, plot_path, measured_curves(res, sens, model))
    elif plot_path is not None:
        plot_pareto(res, plot_path)
    metric = sens.metric if sens else None
    return BudgetRun(res, data, model, out, plot_path, metric, sens, checked)
