"""The model commands: ``inspect`` a model, ``export`` it to a target, ``check`` an ONNX
graph for a target, ``calibrate`` A-ViT's keep counts."""

from __future__ import annotations

import json

import typer

from edgeprune.cli import options as o
from edgeprune.cli.console import err, lines, note, out, progress
from edgeprune.render.tables import calibration_lines, findings_table, inspect_table, print_export


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
    note(source)

    out.print(inspect_table(src, source, info["params"]))


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
    note(source)
    with progress("exporting") as step:
        result = export_source(source, req, source.default_name(), step)

    print_export(result, out, err)
    if result.error is not None:
        raise result.error


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

    out.print(findings_table(model, target, findings))
    raise typer.Exit(1)


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
    note(source)

    lines(calibration_lines(out_path, data))


COMMANDS = {
    "inspect": inspect,
    "export": export,
    "check": check,
    "calibrate": calibrate,
}
