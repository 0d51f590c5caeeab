"""The budget commands: ``predict`` a model's latency from a latency table, ``budget`` (the
keep schedule that meets a target, optionally verified by measurement)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeprune.cli import groups as g
from edgeprune.cli import options as o
from edgeprune.cli.console import err, lines, note, out, print_json, progress
from edgeprune.render.tables import bench_notes, budget_lines, expected_line, predict_table


@g.grouped
def predict(
    *,
    src: o.SrcArg,
    profile: o.TableOpt,
    pruning: g.Pruning = g.Pruning(),
    batch: o.PredictBatchOpt = 1,
    budget: o.BudgetOpt = None,
    as_json: o.JsonOpt = False,
    verbose: o.VerboseOpt = False,
) -> None:
    """Predict a model's latency on a device from its latency table.

    One expected latency (± the table's error); --verbose adds the block-by-block parts.
    With --budget, the budget's re-anchoring to the machine it was verified on applies."""
    from edgeprune.budget.file import load_budget
    from edgeprune.latency.model import predict_source
    from edgeprune.latency.table import untrusted_warning

    source = pruning.resolve(src, budget)
    rescale = load_budget(budget).reanchor_scale if budget is not None else 1.0
    model, pred, info = predict_source(profile, source, batch, rescale=rescale)
    if (warning := untrusted_warning(model.table, profile)) is not None:
        err.print(f"warning: {warning}", markup=False, style="yellow")
    if as_json:
        print_json(info)
        return
    note(source)
    if not model.table.measured:
        err.print("[yellow]note:[/] this latency table is estimated, not measured")
    if verbose:
        out.print(predict_table(source, pred, f"{src} on {info['device']} (table {profile})"))
    out.print(expected_line(info["expected"]))


@g.grouped
def budget_cmd(
    *,
    profile: o.TableOpt,
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
    quiet: g.Quiet = g.Quiet(),
    verbose: o.VerboseOpt = False,
    extrapolate: o.ExtrapolateOpt = False,
) -> None:
    """The keep ratios that meet a latency target and keep the most (tokens or accuracy)."""
    from edgeprune.budget.run import BudgetRequest, make_budget

    req = BudgetRequest(
        profile=profile, target_ms=target_ms, target_fps=target_fps, method=method,
        schedule=schedule, locs=locs, sensitivity=sensitivity, out=out_path, plot=plot,
        no_plot=no_plot, force=force, margin=margin, verify=verify, rounds=rounds,
        reanchor=reanchor, extrapolate=extrapolate, wait_quiet_s=quiet.wait_quiet,
        pin=quiet.cpus(),
    )  # fmt: skip
    with progress("verifying") as step:
        run = make_budget(req, step)
    if run.verification is not None:
        for n in bench_notes(run.verification.conditions or {}):
            err.print(n, markup=False)
    for warning in run.warnings:
        err.print(f"warning: {warning}", markup=False, style="yellow")
    if as_json:
        data = {k: v for k, v in run.data.items() if k != "profile_table"}
        print_json({**data, "expected": run.expected.to_dict()})
    else:
        if not run.model.table.measured:
            err.print("[yellow]note:[/] this latency table is estimated, not measured")

        lines(budget_lines(run, verbose))
    if run.verification is not None and not run.verification.met:
        raise typer.Exit(1)


COMMANDS = {
    "predict": predict,
    "budget": budget_cmd,
}
