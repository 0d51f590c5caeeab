"""Target dispatch for ``edgeprune export``: which options each target takes, the
default output name, and the call into that target's module. No per-method code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.source import Source

TARGETS = {"onnx": ".onnx", "ort": ".ort", "trt": ".engine", "coreml": ".mlpackage"}
PRECISIONS = {
    "onnx": ("fp32",),
    "ort": ("fp32",),
    "trt": ("fp32", "fp16"),
    "coreml": ("fp16", "fp32"),
}
DEFAULT_PRECISION = {"onnx": "fp32", "ort": "fp32", "trt": "fp32", "coreml": "fp16"}
# options that only make sense for one target: option -> targets that take it
ONLY_FOR = {
    "--dynamic-batch": ("trt",),
    "--workspace": ("trt",),
    "--timing-cache": ("trt",),
    "--int8": ("ort",),
    "--min-target": ("coreml",),
    "--compute-units": ("coreml",),
}


@dataclass
class ExportRequest:
    target: str = "onnx"
    out: Path | None = None
    batch: int = 1
    opset: int = 17
    force: bool = False
    parity_inputs: int = 16
    precision: str | None = None
    int8: bool = False
    dynamic_batch: str | None = None
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    min_target: str | None = None
    compute_units: str | None = None

    def given(self) -> dict[str, bool]:
        return {
            "--dynamic-batch": self.dynamic_batch is not None,
            "--workspace": self.workspace_mib is not None,
            "--timing-cache": self.timing_cache is not None,
            "--int8": self.int8,
            "--min-target": self.min_target is not None,
            "--compute-units": self.compute_units is not None,
        }


def validate(req: ExportRequest) -> str:
    """Check the target and option combination before any work; returns the precision."""
    if req.target not in TARGETS:
        raise EdgepruneError(f"unknown target '{req.target}'", f"expected: {', '.join(TARGETS)}")
    for opt, used in req.given().items():
        if used and req.target not in ONLY_FOR[opt]:
            raise EdgepruneError(
                f"{opt} does not apply to --target {req.target}",
                f"it is for --target {' or '.join(ONLY_FOR[opt])}",
            )
    precision = req.precision or DEFAULT_PRECISION[req.target]
    if precision not in PRECISIONS[req.target]:
        hint = f"--target {req.target} takes --precision {' or '.join(PRECISIONS[req.target])}"
        if req.target == "ort" and precision == "int8":
            hint = "use --int8 for dynamic int8 quantization"
        raise EdgepruneError(
            f"--precision {precision} is not supported with --target {req.target}", hint
        )
    if req.parity_inputs < 1:
        raise EdgepruneError(f"--parity-inputs {req.parity_inputs} must be at least 1")
    if req.batch < 1:
        raise EdgepruneError(f"--batch {req.batch} is not a positive batch size")
    if req.target == "trt":
        trt_options(req, precision).validate()
    if req.target == "coreml":
        from edgeprune.export.coreml import validate as coreml_validate

        coreml_validate(precision, req.min_target or "ios17", req.compute_units or "all")
    return precision


def trt_options(req: ExportRequest, precision: str):
    from edgeprune.export.tensorrt import TrtOptions, parse_dynamic_batch

    return TrtOptions(
        precision,
        1024 if req.workspace_mib is None else req.workspace_mib,
        parse_dynamic_batch(req.dynamic_batch),
        req.timing_cache,
    )


def default_out(name: str, target: str) -> Path:
    return Path(name + TARGETS[target])


def run_export(source: Source, req: ExportRequest, out: Path, progress=None) -> dict:
    """Export under a lock on ``out``: two runs writing the same output never interleave;
    the second fails cleanly (each exporter re-checks ``--force`` under the lock)."""
    from edgeprune.atomic import output_lock

    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not (parent.is_dir() and os.access(parent, os.W_OK)):
        return _run_export(source, req, out, progress)  # the exporter reports the bad --out
    with output_lock(out):
        return _run_export(source, req, out, progress)


def _run_export(source: Source, req: ExportRequest, out: Path, progress=None) -> dict:
    precision = validate(req)
    common = {"force": req.force, "n_parity_inputs": req.parity_inputs, "progress": progress}
    if req.target == "onnx":
        from edgeprune.export.onnx import export_onnx

        return export_onnx(source, out, batch=req.batch, opset=req.opset, **common)
    if req.target == "ort":
        from edgeprune.export.ort import export_ort

        return export_ort(source, out, req.batch, req.opset, int8=req.int8, **common)
    if req.target == "trt":
        from edgeprune.export.tensorrt import export_trt

        opts = trt_options(req, precision)
        return export_trt(source, out, opts, req.batch, req.opset, **common)
    from edgeprune.export.coreml import export_coreml

    return export_coreml(
        source,
        out,
        req.batch,
        precision,
        req.min_target or "ios17",
        req.compute_units or "all",
        **common,
    )
