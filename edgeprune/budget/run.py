"""``edgeprune budget``: search a keep schedule for a target on a latency table, write
the budget file (``budget_file``) and its plot, and with ``--verify`` measure the
choice (``verify``). Above the file format, so that ``source`` (which reads budget
files) never imports the search's orchestration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from edgeprune.budget.file import budget_dict
from edgeprune.budget.search import (
    BudgetResult,
    Sensitivity,
    UnreachableTarget,
    check_schedule,
    chosen_summary,
    load_sensitivity,
    measured_curves,
    resolve_margin,
    search,
    target_from,
)
from edgeprune.budget.verify import Verification, verify_budget
from edgeprune.core.atomic import Output, check_outputs, write_json_atomic
from edgeprune.core.parsing import parse_ints
from edgeprune.latency.model import (
    Expected,
    LatencyModel,
    expected_from_measurement,
    expected_from_table,
    load_model,
)
from edgeprune.latency.table import untrusted_warning
from edgeprune.render.plots import plot_accuracy_pareto, plot_pareto
from edgeprune.runtimes.conditions import watched


@dataclass(kw_only=True)
class BudgetRequest:
    """What ``edgeprune budget`` asks for: the profile, the target (``target_ms`` or
    ``target_fps``), the search's settings, where the file and its plot go, and with
    ``verify`` how the choice is measured here."""

    profile: Path
    target_ms: float | None = None
    target_fps: float | None = None
    method: str | None = None
    schedule: str = "geometric"
    locs: str | None = None
    sensitivity: Path | None = None
    out: Path = Path("budget.json")
    plot: Path | None = None
    no_plot: bool = False
    force: bool = False
    margin: str | None = "auto"
    verify: bool = False
    rounds: int = 30
    reanchor: bool = True
    extrapolate: bool = False  # search below the sensitivity file's measured keep ratios
    pin: tuple[int, ...] | None = None  # --verify: CPUs to measure on
    wait_quiet_s: float | None = None  # --verify: first wait this long for a quiet machine

    @property
    def plot_path(self) -> Path | None:
        """Where the plot goes: ``plot``, else ``<out>.pareto.png`` (None: ``no_plot``)."""
        if self.no_plot:
            return None
        return self.plot or self.out.with_name(self.out.stem + ".pareto.png")


@dataclass(kw_only=True)
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
    # one line each: an untrusted table, a sensitivity file that was not used (and why)
    warnings: list[str] = field(default_factory=list)

    @property
    def chosen_summary(self) -> str | None:
        """``budget --sensitivity``: the line naming the chosen point on the front."""
        if self.sensitivity is None:
            return None
        return chosen_summary(self.result, self.sensitivity)

    @property
    def expected(self) -> Expected:
        """The one latency quoted for the chosen schedule: measured with --verify (± half
        its median's 95 % interval), else the table's prediction (re-anchored when it was)
        ± its error."""
        res, v = self.result, self.verification
        if v is not None:
            ci = v.measured_ci_ms
            e = expected_from_measurement(
                f"{self.model.table.device.get('name')} (measured here, {v.runtime})",
                v.measured_ms,
                (ci[1] - ci[0]) / 2 if ci else None,
                table_ms=v.table_predicted_ms,
            )
            e.parts.update(
                plus_minus="half the 95 % interval", predicted_ms=v.predicted_ms,
                converged=v.converged,
            )  # fmt: skip
            return e
        return expected_from_table(self.model, res.chosen.predicted_ms, res.scale)


def make_budget(req: BudgetRequest, progress: Callable[[str], None] | None = None) -> BudgetRun:
    """Search the keep schedule for a target on a latency table (aiming ``margin`` under
    it, see ``budget.resolve_margin``) and write the budget file (and, unless
    ``no_plot``, its Pareto plot, default ``<out>.pareto.png``; with a sensitivity file,
    predicted accuracy vs latency with the measured stage curves). With ``verify``, the
    chosen schedule is exported and timed against dense here first (``verify.py``), and,
    with ``reanchor``, chosen again on the table re-anchored to the machine's speed now
    (dense timed here first); the file holds the schedule verified and the
    verification."""

    plot_path = req.plot_path
    check_outputs(
        {"--out": Output(req.out, ".json"), "--plot": plot_path and Output(plot_path, ".png")},
        {"--table": req.profile, "--sensitivity": req.sensitivity}, req.force,
    )  # fmt: skip
    target = target_from(req.target_ms, req.target_fps)
    model = load_model(req.profile)
    sens, ignored = _sensitivity(req)
    check_schedule(req.schedule)
    frac, why = resolve_margin(req.margin, model.table)
    choose = partial(
        search, model, target, req.method or model.table.method or "dynamicvit", req.schedule,
        parse_ints(req.locs, "--locs"), sens, sensitivity_path=str(req.sensitivity),
        margin=frac, margin_source=why, extrapolate=req.extrapolate,
    )  # fmt: skip
    res, checked = _choose(req, model, choose, progress)
    data = budget_dict(res, model, req.profile)
    if ignored is not None:
        data["sensitivity_ignored"] = ignored
    if checked is not None:
        data["verification"] = checked.to_dict()
    write_json_atomic(req.out, data)
    _plot(res, sens, model, plot_path)
    warnings = [w for w in (untrusted_warning(model.table, req.profile), ignored) if w]
    return BudgetRun(
        result=res, data=data, model=model, path=req.out, plot=plot_path,
        metric=sens.metric if sens else None, sensitivity=sens, verification=checked,
        warnings=warnings,
    )  # fmt: skip


def _sensitivity(req: BudgetRequest) -> tuple[Sensitivity | None, str | None]:
    """The sensitivity file, read, or (None, why) when its measurements cannot tell
    schedules apart (``Sensitivity.indistinct``): the search then weighs kept tokens."""
    if req.sensitivity is None:
        return None, None
    sens = load_sensitivity(req.sensitivity)
    if sens.indistinct is None:
        return sens, None
    return None, (
        f"sensitivity file {req.sensitivity} cannot tell schedules apart ({sens.indistinct}): "
        "the budget weighs kept tokens instead; measure it with trained weights on more "
        "labelled images"
    )


def _choose(
    req: BudgetRequest, model: LatencyModel, choose: Callable[..., BudgetResult], progress
) -> tuple[BudgetResult, Verification | None]:
    """The search's choice on the table and, with ``verify``, the verified one."""
    try:
        res = choose()
    except UnreachableTarget:
        if not (req.verify and req.reanchor):
            raise
        res = None  # the machine may run faster now than the table says: re-anchoring decides
    if not req.verify:
        return res, None
    with watched(pin=req.pin, wait_quiet_s=req.wait_quiet_s, progress=progress) as cond:
        res, v = verify_budget(
            model, choose, res, rounds=req.rounds, reanchor=req.reanchor, progress=progress
        )
    return res, replace(v, conditions=cond)


def _plot(res: BudgetResult, sens: Sensitivity | None, model: LatencyModel, path: Path | None):
    """The budget's plot: predicted accuracy vs latency with a sensitivity file, else
    the Pareto front of kept tokens (nothing without a path)."""
    if path is not None and sens is not None:
        plot_accuracy_pareto(res, sens, model, path, measured_curves(res, sens, model))
    elif path is not None:
        plot_pareto(res, path)
