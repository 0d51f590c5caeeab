"""The budget commands: ``predict`` a model's latency from a latency table, ``budget`` (the
keep schedule that meets a target, optionally verified by measurement)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeprune.cli import options as o
from edgeprune.cli.console import err, lines, note, out, progress
from edgeprune.render.tables import budget_lines, predict_table


@o.grouped
def predict(
    src: o.SrcArg,
    profile: o.ProfileOpt,
    pruning: o.Pruning = o.Pruning(),
    batch: o.PredictBatchOpt = 1,
    budget: o.BudgetOpt = None,
    as_json: o.JsonOpt = False,
) -> None:
    """Predicted latency of a model on a profiled device, with the per-block breakdown."""
    from edgeprune.latency.model import predict_source

    source = pruning.resolve(src, budget)
    model, pred, info = predict_source(profile, source, batch)
    if as_json:
        print(json.dumps(info))
        return
    note(source)
    if not model.table.measured:
        err.print("[yellow]note:[/] this profile is estimated, not measured")

    out.print(predict_table(source, pred, f"{src} on {info['device']} (profile {profile})"))


def budget_cmd(
    profile: o.ProfileOpt,
    target_ms: o.TargetMsOpt = None,
    target_fps: o.TargetFpsOpt = None,
    method: o.BudgetMethodOpt = None,
    schedule: o.ScheduleOpt = "geometric",
    locs: o.LocsOpt = None,
    sensitivity: o.SensitivityOpt = None,
    out_path: o.BudgetOutOpt = Path("budget.json"),
    plot: o.ParetoOpt = None,
    no_plot: o.NoPlotOpt = False,
    force: o.ForceOpt = False,
    as_json: o.JsonOpt = False,
    margin: o.MarginOpt = "auto",
    verify: o.VerifyOpt = False,
    rounds: o.RoundsOpt = 30,
    reanchor: o.ReanchorOpt = True,
) -> None:
    """Keep ratios that meet a latency target and keep the most tokens (or accuracy)."""
    from edgeprune.budget.run import make_budget

    with progress("verifying") as step:
        run = make_budget(
            profile, target_ms, target_fps, method, schedule, locs, sensitivity, out_path,
            plot, no_plot, force, margin, verify, rounds, reanchor, step,
        )  # fmt: skip
    if as_json:
        print(json.dumps({k: v for k, v in run.data.items() if k != "profile_table"}))
    else:
        if not run.model.table.measured:
            err.print("[yellow]note:[/] this profile is estimated, not measured")

        lines(budget_lines(run))
    if run.verification is not None and not run.verification.met:
        raise typer.Exit(1)


COMMANDS = {
    "predict": predict,
    "budget": budget_cmd,
}
