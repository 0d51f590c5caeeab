"""CoreML target: ``torch.export`` → coremltools ML Program, saved as ``.mlpackage``
(a directory, built in a temp dir and renamed into place).

Conversion runs anywhere coremltools does; prediction only on macOS, so parity runs
there and is recorded as skipped elsewhere — never as passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from onnx import TensorProto

from edgeprune.core.atomic import atomic_dir, write_json_atomic
from edgeprune.core.backends.optional import import_coremltools
from edgeprune.core.errors import EdgepruneError
from edgeprune.export import fallbacks
from edgeprune.export.check import COMMON_OPS, Finding, Graph
from edgeprune.export.manifest import base_manifest, prepare_outputs, sha256_tree, skipped
from edgeprune.export.onnx import INPUT_NAME, OUTPUT_NAME, io_spec
from edgeprune.export.parity import check_parity
from edgeprune.export.registry import Target, TargetOption, Tolerance, register

if TYPE_CHECKING:
    import torch

    from edgeprune.core.source import Source
    from edgeprune.export.registry import ExportRequest, ExportResult

PRECISIONS = ("fp16", "fp32")
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_and_ne": "CPU_AND_NE",
}
# ML Programs need iOS 15 / macOS 12 or newer
MIN_TARGETS = {
    "ios15": "iOS15",
    "ios16": "iOS16",
    "ios17": "iOS17",
    "ios18": "iOS18",
    "macos12": "macOS12",
    "macos13": "macOS13",
    "macos14": "macOS14",
    "macos15": "macOS15",
}
TOLERANCE = {"fp32": Tolerance(1e-3, 1.0), "fp16": Tolerance(0.5, 0.9)}  # as TensorRT's
# ops CoreML's converters map to MIL (the ONNX graph is a proxy: the real path is
# torch.export → coremltools, which sees the same aten ops)
SUPPORTED_OPS = COMMON_OPS | {"ConstantOfShape", "CumSum", "ScatterElements", "GatherND", "Mod"}


def _one_of(value: str, allowed: dict, message: str) -> str:
    if value not in allowed:
        raise EdgepruneError(message, f"expected one of: {', '.join(allowed)}")
    return value


def check_min_target(min_target: str) -> str:
    return _one_of(
        min_target, MIN_TARGETS, f"--min-target {min_target} is not an ML Program target"
    )


def check_compute_units(units: str) -> str:
    return _one_of(units, COMPUTE_UNITS, f"--compute-units {units} is unknown")


def validate(precision: str, min_target: str, compute_units: str) -> None:
    if precision not in PRECISIONS:
        raise EdgepruneError(
            f"--precision {precision} is not supported for --target coreml",
            "use fp16 (default) or fp32; int8 weight compression is not supported yet",
        )
    check_min_target(min_target)
    check_compute_units(compute_units)


def convert(
    model: torch.nn.Module,
    batch: int,
    img: int,
    precision: str = "fp16",
    min_target: str = "ios17",
    compute_units: str = "all",
):
    """The ``ct.models.MLModel`` (not loaded for prediction off macOS)."""
    ct = import_coremltools()
    dummy = torch.zeros(batch, 3, img, img)
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(sink),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        try:
            ep = _drop_aliases(torch.export.export(model, (dummy,)).run_decompositions({}))
        except Exception as e:  # noqa: BLE001  (torch.export raises many kinds)
            raise EdgepruneError(
                f"torch.export failed: {' '.join(str(e).split())[:200]}", exit_code=1
            ) from e
        return ct.convert(
            ep,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, MIN_TARGETS[min_target]),
            compute_precision=(
                ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
            ),
            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units]),
            inputs=[ct.TensorType(name=INPUT_NAME, shape=dummy.shape, dtype=np.float32)],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            skip_model_load=sys.platform != "darwin",
        )


def add_metadata(mlmodel, source: Source) -> None:
    d = source.describe()
    mlmodel.short_description = (
        f"{source.arch.name} {source.method.name} static top-k ViT (edgeprune); "
        f"input: {INPUT_NAME} float32 NCHW, output: {OUTPUT_NAME}"
    )
    mlmodel.author = "edgeprune"
    meta = mlmodel.user_defined_metadata
    meta["edgeprune.source"] = d["source"]
    meta["edgeprune.method"] = d["method"]
    meta["edgeprune.prune_locs"] = json.dumps(d["prune_locs"])
    meta["edgeprune.keep_ratios"] = json.dumps(d["keep_ratios"])
    meta["edgeprune.random_weights"] = json.dumps(d["random_weights"])
    meta["edgeprune.token_plan"] = json.dumps(source.plan.to_dict())


def export_coreml(
    source: Source,
    out: Path,
    *,
    batch: int = 1,
    precision: str = "fp16",
    min_target: str = "ios17",
    compute_units: str = "all",
    force: bool = False,
    n_parity_inputs: int = 16,
    progress=None,
) -> dict:
    out = Path(out)
    validate(precision, min_target, compute_units)
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    suffixes, bundle = CoreMLTarget.accepted_suffixes(), CoreMLTarget.directory
    mpath = prepare_outputs(out, suffixes, force, directory=bundle)
    step = progress or (lambda _msg: None)
    img = source.arch.img_size
    step("converting (torch.export → coremltools ML Program)")
    mlmodel = convert(source.model(), batch, img, precision, min_target, compute_units)
    add_metadata(mlmodel, source)
    manifest = base_manifest(source, "coreml", out, batch, "coremltools")
    manifest.update(
        {
            "format": "mlprogram",
            "precision": precision,
            "minimum_deployment_target": MIN_TARGETS[min_target],
            "compute_units": compute_units,
            **io_spec(source, batch),
            "tolerance": TOLERANCE[precision].to_dict(),
            "parity": skipped("needs macOS"),
            "fallbacks": fallbacks.not_checked(
                f"compute units {compute_units}",
                "which unit runs each op is in Core ML's compute plan, on macOS only",
            ),
        }
    )
    with atomic_dir(out) as tmp:
        pkg = tmp / "model.mlpackage"
        step("saving the .mlpackage")
        mlmodel.save(str(pkg))
        manifest["sha256"] = sha256_tree(pkg)
        if sys.platform == "darwin":  # prediction runs on macOS only
            step(f"parity check ({n_parity_inputs} inputs, CoreML)")
            manifest["parity"] = _parity(
                source, pkg, batch, precision, compute_units, n_parity_inputs
            )
        # the package becomes the directory itself: move its contents up one level
        for child in pkg.iterdir():
            child.rename(tmp / child.name)
        pkg.rmdir()
        write_json_atomic(mpath, manifest)
    return manifest


def _parity(source: Source, pkg: Path, batch: int, precision: str, units: str, n: int) -> dict:
    """The saved package, loaded in the CoreML runner, against PyTorch."""
    p = check_parity(
        "the CoreML model", source, pkg, batch=batch, n_inputs=n, tol=TOLERANCE[precision],
        runtime="coreml", hint="nothing was written", label=f"coreml ({units})",
        precision=precision, compute_units=COMPUTE_UNITS[units],
    )  # fmt: skip
    return p.to_dict()


def _drop_aliases(ep):
    """Remove ``aten.alias`` nodes (identity views that coremltools cannot convert),
    wiring their users to the aliased tensor."""

    aliases = {torch.ops.aten.alias.default}
    if hasattr(torch.ops.aten, "alias_copy"):
        aliases.add(torch.ops.aten.alias_copy.default)
    g = ep.graph_module.graph
    for node in list(g.nodes):
        if node.op == "call_function" and node.target in aliases:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    ep.graph_module.recompile()
    return ep


def _int64_finding(where: str, detail: str) -> Finding:
    return Finding(severity="error", rule="int64 tensor", where=where, detail=detail)


@register
class CoreMLTarget(Target):
    """CoreML: an ML Program ``.mlpackage`` (converted here; run on macOS only)."""

    name = "coreml"
    suffix = ".mlpackage"
    directory = True
    precisions = PRECISIONS
    tolerances = TOLERANCE
    options = (
        TargetOption("min_target", "--min-target", default="ios17", parse=check_min_target),
        TargetOption("compute_units", "--compute-units", default="all", parse=check_compute_units),
    )
    supported_ops = SUPPORTED_OPS
    computed_topk = "error"
    dynamic_dim = "error"

    def graph_rules(self, graph: Graph) -> list[Finding]:
        out = []
        for vi in graph.io:
            if vi.type.tensor_type.elem_type == TensorProto.INT64:
                detail = "CoreML I/O has no int64"
                out.append(_int64_finding(f"'{vi.name}'", detail))
        # Slice bounds of ±INT64_MAX are ONNX's "to the end": CoreML clamps those
        slice_bounds = {i for n in graph.nodes if n.op_type == "Slice" for i in n.input[1:]}
        for name, arr in graph.consts.items():
            if name in slice_bounds or arr is None or arr.dtype.name != "int64" or not arr.size:
                continue
            if abs(arr).max() > 2**31 - 1:
                detail = "int64 value outside int32"
                out.append(_int64_finding(f"'{name}'", detail))
        return out

    def export(self, source: Source, req: ExportRequest, out: Path, progress=None) -> ExportResult:
        o = req.options
        man = export_coreml(
            source,
            out,
            batch=req.batch,
            precision=req.precision,
            min_target=o["min_target"],
            compute_units=o["compute_units"],
            **req.common(progress),
        )
        return self.result(out, man)
