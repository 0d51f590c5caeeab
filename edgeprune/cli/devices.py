"""The device commands: list ``devices``, ``profile`` one into a latency table, ``bench`` an
artifact on one, ``table-info`` and ``validate`` for a latency table."""

from __future__ import annotations

from edgeprune.cli import groups as g
from edgeprune.cli import options as o
from edgeprune.cli.console import err, lines, out, print_json, progress
from edgeprune.render.ops import ops_lines
from edgeprune.render.tables import (
    bench_line,
    bench_notes,
    devices_notes,
    devices_table,
    profile_lines,
    table_lines,
    validation_lines,
    validation_table,
)


def devices(
    *,
    as_json: o.JsonOpt = False,
    timeout: o.CheckTimeoutOpt = 4.0,
) -> None:
    """List the device descriptors and whether each can be reached from here."""
    from edgeprune.profiles.devices import device_rows

    rows = device_rows(timeout)
    if as_json:
        print_json({"devices": rows})
        return

    out.print(devices_table(rows))
    lines(devices_notes(rows))


@g.grouped
def profile(
    *,
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
    quiet: g.Quiet = g.Quiet(),
    remote: g.Remote = g.Remote(timeout=900.0),
) -> None:
    """Measure a device's latency table (blocks vs tokens, embed, head, selectors)."""
    cpus = quiet.cpus()  # refused before the heavy imports

    from edgeprune.profiling.measure import ProfileJob, profile_device

    job = ProfileJob(
        device=remote.device(device), arch=arch, method=method, threads=threads, batch=batch,
        out=out_path, runs=runs, grid=grid, check_points=check_points, chain=chain,
        halves=halves, e2e=e2e, plot=plot, force=force, resume=resume,
        transport_options=remote.transport_options(), pin=cpus, wait_quiet_s=quiet.wait_quiet,
    )  # fmt: skip
    try:
        with progress(job.device.name, bar=True) as step:
            res = profile_device(job, step)
    except KeyboardInterrupt:
        kept = job.resume_file()
        if kept is not None and kept.exists():
            err.print(f"note: progress kept in {kept}; rerun with --resume", markup=False)
        raise
    for n in bench_notes(res.table.extra.get("conditions") or {}):
        err.print(n, markup=False)
    lines(profile_lines(res))


@g.grouped
def bench(
    *,
    artifact: o.ArtifactArg,
    device: o.BenchDeviceOpt = None,
    threads: o.ThreadsOpt = None,
    runs: o.BenchRunsOpt = None,
    tolerance: o.ToleranceOpt = None,
    max_time: o.MaxTimeOpt = None,
    quiet: g.Quiet = g.Quiet(),
    cooldown: o.CooldownOpt = 0.0,
    no_verify_hash: o.NoVerifyHashOpt = False,
    as_json: o.JsonOpt = False,
    ops: g.Ops = g.Ops(),
    remote: g.Remote = g.Remote(timeout=600.0),
) -> None:
    """End-to-end latency of one artifact: the median with its 95 % interval, p90, min,
    max, runs, and a warning when the machine was busy while timing; --ops: where it goes."""
    cpus = quiet.cpus()  # refused before the heavy imports

    from edgeprune.export.manifest import hash_note
    from edgeprune.profiling.bench import BenchOptions, device_name
    from edgeprune.profiling.bench import bench as run_bench

    dev = remote.device(device_name(artifact, device))
    how = BenchOptions(
        tolerance=tolerance / 100 if tolerance is not None else None,
        max_time_s=max_time, wait_quiet_s=quiet.wait_quiet, pin=cpus, cooldown_s=cooldown,
        verify_hash=not no_verify_hash,
    )  # fmt: skip
    ops_opts = _check_ops(artifact, dev, ops.options(runs))
    with progress(dev.name) as step:
        t = run_bench(
            artifact, dev, threads, runs, options=how, progress=step,
            **remote.transport_options(),
        )  # fmt: skip
        profile = _profile_ops(artifact, t.threads, ops_opts, step)
    info = {"artifact": str(artifact), "device": dev.name, "host": dev.host or "local"}
    info |= t.to_dict() | ({"ops": profile.to_dict()} if profile is not None else {})
    for line in bench_notes(t.extra.get("conditions", {})):
        err.print(line, markup=False)
    if (unchecked := hash_note(artifact, t.extra.get("sha256", ""))) is not None:
        err.print(f"note: {unchecked}", markup=False)
    if as_json:
        print_json(info)
        return

    out.print(bench_line(artifact, dev, t))
    if profile is not None:
        lines(["", *ops_lines(profile)] + [f"[green]wrote[/] {p}" for p in profile.written])


def _check_ops(artifact, dev, opts):
    """``bench --ops``'s options, refused before timing where they cannot be met."""
    if opts is not None:
        from edgeprune.profiling.bench_ops import check_ops

        check_ops(artifact, dev, opts)
    return opts


def _profile_ops(artifact, threads, opts, step):
    """``bench --ops``: the per-operator profile (and ``--ops-out``'s files), or None."""
    if opts is None:
        return None
    from edgeprune.profiling.bench_ops import ops_profile, write_ops

    step("per-operator profile")
    return write_ops(ops_profile(artifact, threads, opts), opts)


def table_info(
    *,
    path: o.TableArg,
    as_json: o.InfoJsonOpt = False,
) -> None:
    """Read a latency table (its schema checked) and summarise it."""
    from edgeprune.latency.table import load, untrusted_warning

    t = load(path)
    if (warning := untrusted_warning(t, path)) is not None:
        err.print(f"warning: {warning}", markup=False, style="yellow")
    if as_json:
        print_json(t.to_dict())
        return

    lines(table_lines(path, t))


@g.grouped
def validate(
    *,
    table: o.ValidateArg,
    configs: o.ConfigsOpt = 20,
    threads: o.ValThreadsOpt = None,
    rounds: o.RoundsOpt = 30,
    burst: o.BurstOpt = 3,
    seed: o.SeedOpt = 0,
    plot: o.ScatterOpt = None,
    force: o.ForceOpt = False,
    quiet: g.Quiet = g.Quiet(),
    as_json: o.JsonOpt = False,
) -> None:
    """Validate a latency table: its predictions against whole models measured here.

    Exports random schedules, times them end to end, reports the prediction error."""
    cpus = quiet.cpus()  # refused before the heavy imports

    from edgeprune.profiling.validate import validate_to_plot

    settings = dict(configs=configs, threads=threads, rounds=rounds, seed=seed, burst=burst)
    with progress("validating") as step:
        rep, plot_path = validate_to_plot(
            table,
            plot,
            pin=cpus,
            wait_quiet_s=quiet.wait_quiet,
            force=force,
            progress=step,
            **settings,
        )
    for n in bench_notes(rep.conditions or {}):
        err.print(n, markup=False)
    if as_json:
        print_json({**rep.to_dict(), "plot": str(plot_path)})
        return

    out.print(validation_table(table, rep))
    lines(validation_lines(rep))
    out.print(f"[green]wrote[/] {plot_path}")


COMMANDS = {
    "devices": devices,
    "profile": profile,
    "bench": bench,
    "table-info": table_info,
    "validate": validate,
}
