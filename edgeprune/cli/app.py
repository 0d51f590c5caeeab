"""The ``edgeprune`` command line. Thin: every command parses its options, calls one
library function and renders the result (``render.py``); option types in
``cli_options.py``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from edgeprune.cli import options as o
from edgeprune.core.errors import EdgepruneError

app = typer.Typer(
    name="edgeprune",
    help="Deploy token-pruned Vision Transformers: static top-k graphs, export, profile, budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _root(
    debug: o.DebugOpt = False,
) -> None:
    _state["debug"] = _state["debug"] or debug


def _note(source) -> None:
    for n in source.notes:
        err.print(f"[yellow]note:[/] {n}")


def _progress(label: str, bar: bool = False):
    from edgeprune.render.tables import progress

    return progress(err, label, bar)


def _lines(lines: list[str]) -> None:
    for line in lines:
        out.print(line)


@app.command()
@o.grouped
def inspect(
    src: o.SrcArg,
    choice: o.ModelChoice = o.ModelChoice(),
    as_json: o.JsonOpt = False,
) -> None:
    """Show what a model is: method, arch, keep schedule, tokens per block, params, GFLOPs."""
    source = choice.resolve(src)
    info = source.inspect()
    if as_json:
        print(json.dumps(info))
        return
    _note(source)
    from edgeprune.render.tables import inspect_table

    out.print(inspect_table(src, source, info["params"]))


@app.command()
@o.grouped
def export(
    src: o.SrcArg,
    target: o.TargetOpt = "onnx",
    out_path: o.OutOpt = None,
    batch: o.ExportBatchOpt = 1,
    opset: o.OpsetOpt = 17,
    force: o.ExportForceOpt = False,
    parity_inputs: o.ParityOpt = 16,
    precision: o.PrecisionOpt = None,
    int8: o.Int8Opt = False,
    images: o.ImagesOpt = None,
    custom_kernels: o.KernelsOpt = False,
    dynamic_batch: o.DynBatchOpt = None,
    workspace_mib: o.WorkspaceOpt = None,
    timing_cache: o.CacheOpt = None,
    min_target: o.MinTargetOpt = None,
    compute_units: o.UnitsOpt = None,
    choice: o.ModelChoice = o.ModelChoice(),
) -> None:
    """Export the static graph to a target and check it against PyTorch; writes a manifest."""
    from edgeprune.export.targets import export_source, request_from, validate

    req = validate(request_from(dict(locals()), out=out_path))  # before loading anything
    source = choice.resolve(src)
    _note(source)
    with _progress("exporting") as step:
        result = export_source(source, req, source.default_name(), step)
    from edgeprune.render.tables import print_export

    print_export(result, out, err)
    if result.error is not None:
        raise result.error


@app.command()
def calibrate(
    src: o.SrcArg,
    out_path: o.CalibOutOpt,
    images: o.ImagesOpt = None,
    random: o.RandomOpt = None,
    quantile: o.QuantileOpt = 1.0,
    gate_scale: o.GateScaleOpt = None,
    gate_center: o.GateCenterOpt = None,
    heads: o.HeadsOpt = None,
    force: o.ForceOpt = False,
) -> None:
    """A-ViT: run the masked (released) halting model on calibration images and record
    how many tokens still run in each block; the JSON feeds --calibration."""
    from edgeprune.core.methods.avit_calibration import calibrate_source

    source, data = calibrate_source(
        src, out_path, images, random, quantile, gate_scale, gate_center, heads, force
    )
    _note(source)
    from edgeprune.render.tables import calibration_lines

    _lines(calibration_lines(out_path, data))


@app.command()
def devices(
    as_json: o.JsonOpt = False,
    timeout: o.CheckTimeoutOpt = 4.0,
) -> None:
    """List the device descriptors and whether each can be reached from here."""
    from edgeprune.profiles.devices import device_rows

    rows = device_rows(timeout)
    if as_json:
        print(json.dumps({"devices": rows}))
        return
    from edgeprune.render.tables import devices_table

    out.print(devices_table(rows))


@app.command()
@o.grouped
def profile(
    device: o.DeviceOpt,
    arch: o.ArchOpt = "deit_small",
    method: o.SweepMethodOpt = None,
    threads: o.ThreadsOpt = None,
    batch: o.BatchOpt = 1,
    out_path: o.TableOutOpt = None,
    runs: o.SweepRunsOpt = None,
    grid: o.GridOpt = None,
    check_points: o.CheckPointsOpt = 4,
    chain: o.ChainOpt = 4,
    halves: o.HalvesOpt = True,
    e2e: o.E2eOpt = True,
    plot: o.PlotFlagOpt = True,
    force: o.ForceOpt = False,
    resume: o.ResumeOpt = False,
    remote: o.Remote = o.Remote(timeout=900.0),
) -> None:
    """Measure a device's latency table (block/attn/mlp vs tokens, embed, head, selectors)."""
    from edgeprune.profiling.measure import ProfileJob, profile_device

    job = ProfileJob(
        remote.device(device),
        arch, method, threads, batch, out_path, runs, grid, check_points, chain, halves, e2e,
        plot, force, resume, remote.transport_options(),
    )  # fmt: skip
    try:
        with _progress(job.device.name, bar=True) as step:
            res = profile_device(job, step)
    except KeyboardInterrupt:
        kept = job.resume_file()
        if kept is not None and kept.exists():
            err.print(f"note: progress kept in {kept}; rerun with --resume", markup=False)
        raise
    from edgeprune.render.tables import profile_lines

    _lines(profile_lines(res))


@app.command()
@o.grouped
def bench(
    artifact: o.ArtifactArg,
    device: o.BenchDeviceOpt = None,
    threads: o.ThreadsOpt = None,
    runs: o.BenchRunsOpt = None,
    as_json: o.JsonOpt = False,
    remote: o.Remote = o.Remote(timeout=600.0),
) -> None:
    """End-to-end latency of one artifact: median, p90, min, max, runs."""
    from edgeprune.profiling.bench import bench as run_bench
    from edgeprune.profiling.bench import device_name

    dev = remote.device(device_name(artifact, device))
    t = run_bench(artifact, dev, threads, runs, **remote.transport_options())
    info = {"artifact": str(artifact), "device": dev.name, "host": dev.host or "local"}
    info.update(t.to_dict())
    if as_json:
        print(json.dumps(info))
        return
    from edgeprune.render.tables import bench_line

    out.print(bench_line(artifact, dev, t))


@app.command("profile-info")
def profile_info(
    path: o.TableArg,
    as_json: o.InfoJsonOpt = False,
) -> None:
    """Validate a latency table and summarise it."""
    from edgeprune.latency.table import load

    t = load(path)
    if as_json:
        print(json.dumps(t.to_dict()))
        return
    from edgeprune.render.tables import table_lines

    _lines(table_lines(path, t))


@app.command()
def check(
    model: o.OnnxArg,
    target: o.CheckTargetOpt = "trt",
) -> None:
    """Static report of what in an ONNX graph a target will reject or run slowly.
    Exit 0 when clean, 1 when not."""
    from edgeprune.export.targets import check_file

    findings = check_file(model, target)
    if not findings:
        out.print(f"[green]clean:[/] nothing in {model} that {target} rejects or runs slowly")
        return
    from edgeprune.render.tables import findings_table

    out.print(findings_table(model, target, findings))
    raise typer.Exit(1)


@app.command()
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
    _note(source)
    if not model.table.measured:
        err.print("[yellow]note:[/] this profile is estimated, not measured")
    from edgeprune.render.tables import predict_table

    out.print(predict_table(source, pred, f"{src} on {info['device']} (profile {profile})"))


@app.command("budget")
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

    with _progress("verifying") as step:
        run = make_budget(
            profile, target_ms, target_fps, method, schedule, locs, sensitivity, out_path,
            plot, no_plot, force, margin, verify, rounds, reanchor, step,
        )  # fmt: skip
    if as_json:
        print(json.dumps({k: v for k, v in run.data.items() if k != "profile_table"}))
    else:
        if not run.model.table.measured:
            err.print("[yellow]note:[/] this profile is estimated, not measured")
        from edgeprune.render.tables import budget_lines

        _lines(budget_lines(run))
    if run.verification is not None and not run.verification.met:
        raise typer.Exit(1)


@app.command("validate-profile")
def validate_profile_cmd(
    profile_file: o.ValidateArg,
    configs: o.ConfigsOpt = 20,
    threads: o.ValThreadsOpt = None,
    rounds: o.RoundsOpt = 30,
    burst: o.BurstOpt = 3,
    seed: o.SeedOpt = 0,
    plot: o.ScatterOpt = None,
    as_json: o.JsonOpt = False,
) -> None:
    """Export random schedules, measure them end-to-end, report the prediction error."""
    from edgeprune.profiling.validate import validate_to_plot

    settings = dict(configs=configs, threads=threads, rounds=rounds, seed=seed, burst=burst)
    with _progress("validating") as step:
        rep, plot_path = validate_to_plot(profile_file, plot, progress=step, **settings)
    if as_json:
        print(json.dumps({**rep.to_dict(), "plot": str(plot_path)}))
        return
    from edgeprune.render.tables import validation_lines, validation_table

    out.print(validation_table(profile_file, rep))
    _lines(validation_lines(rep))
    out.print(f"[green]wrote[/] {plot_path}")


# accuracy commands (issue 15) live in cli_accuracy.py: cli.py stays under its line budget
def _register_accuracy() -> None:
    from edgeprune.cli import accuracy as cli_accuracy

    for name, fn in cli_accuracy.COMMANDS.items():
        app.command(name)(fn)


_register_accuracy()


def _install_signal_handlers() -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _terminate(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)


def _usage_error(e: Exception) -> bool:
    """typer vendors click; recognise its usage errors without importing private modules."""
    return hasattr(e, "format_message") and hasattr(e, "exit_code")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _install_signal_handlers()
    _state["debug"] = "--debug" in args or os.environ.get("EDGEPRUNE_DEBUG") == "1"
    try:
        rv = app(args=args, prog_name="edgeprune", standalone_mode=False)
        if rv == 130:  # typer turns KeyboardInterrupt (and our SIGTERM) into exit code 130
            err.print("error: interrupted; nothing was written", markup=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return int(e.exit_code)
    except EdgepruneError as e:
        if _state["debug"]:
            raise
        err.print(f"error: {e.one_line()}", markup=False, soft_wrap=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print("error: interrupted; nothing was written", markup=False, soft_wrap=True)
        return 130
    except Exception as e:
        if _state["debug"]:
            raise
        if _usage_error(e):  # bad option, missing argument, bad value
            ctx = getattr(e, "ctx", None)
            cmd = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
            msg = " ".join(str(e.format_message()).split())
            if type(e).__name__ == "NoArgsIsHelpError":
                return 2
            err.print(f"error: {msg} (see 'edgeprune{cmd} --help')", markup=False, soft_wrap=True)
            return 2
        msg = " ".join(str(e).split())[:300]
        err.print(
            f"error: internal error {type(e).__name__}: {msg} "
            "(rerun with --debug for the traceback)",
            markup=False,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
