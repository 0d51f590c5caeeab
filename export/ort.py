"""ONNX Runtime Mobile target: the verified ONNX → an ORT-format model (``.ort``), with
optional int8 dynamic quantization; the ``.ort`` file itself is loaded in onnxruntime
and checked against PyTorch.

int8 (``quantize_dynamic``, weights int8, activations quantized on the fly) cannot
meet the fp32 1e-4 limit: it must stay within max |diff| ≤ 1.0 (logits); its top-1
agreement with fp32 PyTorch is recorded but not enforced, because random-weight
specs have near-tied logits (DeiT-T dynamicvit: 75-88 % agreement at ~0.2 max diff),
so the figure only means something for a trained checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.tools.convert_onnx_models_to_ort import (
    OptimizationStyle,
    convert_onnx_models_to_ort,
)

from edgeprune.core.errors import EdgepruneError
from edgeprune.export import fallbacks
from edgeprune.export.manifest import base_manifest, prepare_outputs, write_file_artifact
from edgeprune.export.onnx import io_spec, verified_onnx
from edgeprune.export.parity import check_parity
from edgeprune.export.registry import INT8, Target, TargetOption, Tolerance, register

# int8 (dynamic, weights QInt8) against fp32: judged by KL and top-1 agreement
# (export/registry.py INT8); max |diff| 1.0 in logits as a sanity bound
TOLERANCE = {"fp32": Tolerance(1e-4, 1.0), "int8": INT8._replace(atol=1.0)}
# ONNX Runtime (Mobile) runs every standard op; only foreign domains are a problem
ORT_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft", "ai.onnx.ml"})

if TYPE_CHECKING:
    from edgeprune.core.source import Source
    from edgeprune.export.registry import ExportRequest, ExportResult


def quantize_int8(onnx_file: Path, out_file: Path) -> None:
    quantize_dynamic(str(onnx_file), str(out_file), weight_type=QuantType.QInt8)


def to_ort_format(onnx_file: Path, out_dir: Path) -> Path:
    """``python -m onnxruntime.tools.convert_onnx_models_to_ort`` (Fixed optimization
    style: the graph ONNX Runtime Mobile loads without further optimization)."""

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        convert_onnx_models_to_ort(
            onnx_file, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed]
        )
    made = sorted(out_dir.glob("*.ort"))
    if not made:
        raise EdgepruneError("onnxruntime wrote no .ort file", exit_code=1)
    return made[0]


def export_ort(source: Source, out: Path, req: ExportRequest, progress=None) -> dict:
    """The verified ONNX as an ORT-format model (``req.option("int8")``: quantized)."""
    out, int8 = Path(out), req.option("int8")
    batch, opset, force, n_parity_inputs = req.batch, req.opset, req.force, req.parity_inputs
    mpath = prepare_outputs(out, OrtTarget.accepted_suffixes(), force)
    step = progress or (lambda _msg: None)
    v = verified_onnx(
        source, batch=batch, opset=opset, n_parity_inputs=n_parity_inputs, progress=step
    )
    precision = "int8" if int8 else "fp32"
    with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as d:
        work = Path(d)
        model_file = work / "model.onnx"
        model_file.write_bytes(v.data)
        if int8:
            step("int8 dynamic quantization")
            q = work / "q" / "model.onnx"
            q.parent.mkdir()
            quantize_int8(model_file, q)
            model_file = q
        step("converting to ORT format")
        ort_file = to_ort_format(model_file, work / "ort")
        step(f"parity check ({n_parity_inputs} inputs, the .ort file in onnxruntime)")
        what = f"the {precision} ORT model"
        parity = check_parity(
            what,
            source,
            ort_file,
            batch=batch,
            n_inputs=n_parity_inputs,
            tol=TOLERANCE[precision],
        )
        manifest = base_manifest(source, "ort", out, batch)
        manifest.update(
            {
                "precision": precision,
                "quantization": "dynamic int8 (weights QInt8)" if int8 else None,
                "opset": opset,
                "optimization_style": "Fixed",
                **io_spec(source, batch),
                "onnx_parity": v.parity.to_dict(),
                "parity": parity.to_dict(),
                "fallbacks": fallbacks.ort_assignment(ort_file),
            }
        )
        return write_file_artifact(out, ort_file.read_bytes(), manifest, mpath)


@register
class OrtTarget(Target):
    """ONNX Runtime Mobile: an ORT-format model, optionally int8-quantized."""

    name = "ort"
    suffix = ".ort"
    tolerances = TOLERANCE
    options = (TargetOption("int8", "--int8", default=False, parse=bool),)
    supported_ops = None
    op_domains = ORT_DOMAINS
    slow_ops = {"NonZero": "data-dependent shape: blocks memory planning"}

    def precision_hint(self, precision: str) -> str:
        if precision == "int8":
            return "use --int8 for dynamic int8 quantization"
        return super().precision_hint(precision)

    def export(self, source: Source, req: ExportRequest, out: Path, progress=None) -> ExportResult:
        return self.result(out, export_ort(source, out, req, progress))
