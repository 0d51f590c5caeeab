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

from edgeprune.atomic import atomic_path, write_json_atomic
from edgeprune.errors import EdgepruneError, ParityError
from edgeprune.export.manifest import base_manifest, prepare_outputs, sha256_file
from edgeprune.export.onnx import MIN_OPSET, compare, io_spec, verified_onnx
from edgeprune.source import Source

# (atol, min top-1 agreement); int8's top-1 agreement is recorded, not enforced
TOLERANCE = {"fp32": (1e-4, 1.0), "int8": (1.0, 0.0)}


def quantize_int8(onnx_file: Path, out_file: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_file), str(out_file), weight_type=QuantType.QInt8)


def to_ort_format(onnx_file: Path, out_dir: Path) -> Path:
    """``python -m onnxruntime.tools.convert_onnx_models_to_ort`` (Fixed optimization
    style: the graph ONNX Runtime Mobile loads without further optimization)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        convert_onnx_models_to_ort(
            onnx_file, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed]
        )
    made = sorted(out_dir.glob("*.ort"))
    if not made:
        raise EdgepruneError("onnxruntime wrote no .ort file", exit_code=1)
    return made[0]


def export_ort(
    source: Source,
    out: Path,
    batch: int = 1,
    opset: int = MIN_OPSET,
    int8: bool = False,
    force: bool = False,
    n_parity_inputs: int = 16,
    progress=None,
) -> dict:
    from edgeprune.runtimes.onnxruntime import make_session, run

    out = Path(out)
    mpath = prepare_outputs(out, (".ort",), force)
    step = progress or (lambda _msg: None)
    v = verified_onnx(source, batch, opset, n_parity_inputs, progress=step)
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
        sess = make_session(ort_file)
        atol, min_top1 = TOLERANCE[precision]
        parity = compare(
            source.model(), lambda x: run(sess, x), batch, source.arch.img_size,
            n_parity_inputs, atol, min_top1,
        )  # fmt: skip
        if not parity.ok:
            raise ParityError(
                f"the {precision} ORT model differs from PyTorch: max |diff| "
                f"{parity.max_abs_diff:.3g} (limit {atol:g}), top-1 agreement "
                f"{parity.top1_agreement:.0%}",
                "no file was written",
                exit_code=1,
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
            }
        )
        with atomic_path(out) as tmp:
            tmp.write_bytes(ort_file.read_bytes())
            manifest["sha256"] = sha256_file(tmp)
            write_json_atomic(mpath, manifest)
    return manifest
