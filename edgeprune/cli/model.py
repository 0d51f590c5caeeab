"""The model commands: ``inspect`` a model, ``export`` it to a target, ``check`` an ONNX
graph for a target, ``calibrate`` A-ViT's keep counts."""

from __future__ import annotations

from dataclasses import asdict

import typer

from edgeprune.cli import groups as g
from edgeprune.cli import options as o
from edgeprune.cli.console import err, lines, note, out, print_json, progress
from edgeprune.render.tables import calibration_lines, findings_table, inspect_table, print_export


@g.grouped
def inspect(
    *,
    src: o.SrcArg,
    choice: g.ModelChoice = g.ModelChoice(),
    as_json: o.JsonOpt = False,
) -> None:
    """Show a model: method, arch, keep schedule, tokens per block, params, GFLOPs."""
    source = choice.resolve(src)
    info = source.inspect()
    if as_json:
        print_json(info)
        return
    note(source)

    out.print(inspect_table(src, source, info["params"]))


@g.grouped
def export(
    *,
    src: o.SrcArg,
    choice: g.ModelChoice = g.ModelChoice(),
    output: g.ExportOutput = g.ExportOutput(),
    options: g.TargetOptions = g.TargetOptions(),
) -> None:
    """Export the static graph to a target, with parity against PyTorch and a manifest."""
    from edgeprune.core.atomic import Output, check_outputs
    from edgeprune.export.targets import export_source, request_from, validate

    req = validate(request_from({**asdict(output), **asdict(options)}))  # before loading
    if req.out is not None:  # not an input (whether it may be replaced: the exporter's call)
        artifact = Output(req.out, folder=req.out.suffix == ".mlpackage")
        ins = {"SRC": src, "--calibration": choice.calibration, "--budget": choice.budget}
        check_outputs({"--out": artifact}, {**ins, "--images": options.images}, force=True)
    source = choice.resolve(src)
    note(source)
    with progress("exporting") as step:
        result = export_source(source, req, source.default_name(), step)

    print_export(result, out, err)
    if result.error is not None:
        raise result.error


def check(
    *,
    model: o.OnnxArg,
    target: o.CheckTargetOpt = "trt",
    strict: o.StrictOpt = False,
    no_verify_hash: o.NoVerifyHashOpt = False,
) -> None:
    """Check an ONNX graph for what a target will reject or run slowly.

    Also lists the ops the artifact's manifest names as run outside the delegate or
    provider it was exported for. A static report; exit 0 when clean, 1 when not (with
    --strict, ops outside the delegate count too)."""
    from edgeprune.export.manifest import hash_note
    from edgeprune.export.targets import check_file

    findings = check_file(model, target, verify_hash=not no_verify_hash)
    if no_verify_hash:
        err.print(f"note: {hash_note(model, 'not checked')}", markup=False)
    if not findings:
        out.print(f"[green]clean:[/] nothing in {model} that {target} rejects or runs slowly")
        return

    out.print(findings_table(model, target, findings))
    if strict or any(f.severity != "fallback" for f in findings):
        raise typer.Exit(1)


def calibrate(
    *,
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
    """A-ViT: record how many tokens still run in each block, on calibration images.

    Runs the masked (released) halting model; the JSON feeds --calibration."""
    from edgeprune.core.methods.avit_calibration import calibrate_source

    source, data = calibrate_source(
        src, out_path, images=images, random=random, quantile=quantile, gate_scale=gate_scale,
        gate_center=gate_center, heads=heads, force=force,
    )  # fmt: skip
    note(source)

    lines(calibration_lines(out_path, data))


COMMANDS = {
    "inspect": inspect,
    "export": export,
    "check": check,
    "calibrate": calibrate,
}
