"""ONNX target, and the ONNX every other target starts from: trace the static graph
(``trace_to_onnx``, also used for the profile's pieces and the benchmarks), simplify
with onnxsim, refuse anything not static, check it in onnxruntime against PyTorch."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnxsim
import torch

from edgeprune.core.errors import EdgepruneError
from edgeprune.export.check import static_problems
from edgeprune.export.manifest import base_manifest, prepare_outputs, write_file_artifact
from edgeprune.export.parity import Parity, check_parity
from edgeprune.export.registry import MIN_OPSET, Target, Tolerance, register

if TYPE_CHECKING:
    import torch

    from edgeprune.core.source import Source
    from edgeprune.export.registry import ExportRequest, ExportResult

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TOLERANCE = {"fp32": Tolerance(1e-4, 1.0)}


def trace_to_onnx(
    model: torch.nn.Module,
    input_shape: Sequence[int],
    opset: int = MIN_OPSET,
    dynamic_batch: bool = False,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> bytes:
    """Trace ``model`` at one fixed input shape into ONNX bytes (TorchScript exporter:
    every shape is a constant, which is what TopK/Gather on TensorRT want).

    ``dynamic_batch`` makes dim 0 of the input and output symbolic (``batch``), for a
    TensorRT optimization profile; every other dimension and every TopK K stay constant.
    """

    dummy = torch.zeros(tuple(input_shape))
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (dummy,),
            f,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            do_constant_folding=True,
            dynamic_axes=axes,
            dynamo=False,
        )
    return f.getvalue()


def simplify(model_bytes: bytes):
    """onnxsim the graph; return the ModelProto."""

    proto = onnx.load_from_string(model_bytes)
    with contextlib.redirect_stdout(io.StringIO()):
        simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise EdgepruneError("onnxsim could not verify the simplified graph")
    return simplified


@dataclass(kw_only=True)
class VerifiedOnnx:
    """An ONNX graph that is static (up to the batch dim, with ``dynamic_batch``) and
    matches PyTorch: what every target builds from."""

    data: bytes
    proto: object
    parity: Parity
    batch: int
    opset: int
    dynamic_batch: bool = False

    def ops(self) -> dict[str, int]:
        return dict(sorted(Counter(n.op_type for n in self.proto.graph.node).items()))


def check_onnx_options(batch: int, opset: int) -> None:
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    if opset < MIN_OPSET:
        raise EdgepruneError(
            f"--opset {opset} is too old",
            f"edgeprune needs opset ≥ {MIN_OPSET} (LayerNormalization)",
        )


def verified_onnx(
    source: Source,
    *,
    batch: int = 1,
    opset: int = MIN_OPSET,
    n_parity_inputs: int = 16,
    atol: float = TOLERANCE["fp32"].atol,
    dynamic_batch: bool = False,
    progress=None,
) -> VerifiedOnnx:
    """Trace, simplify, check the graph is static and matches PyTorch; in memory only.

    Raises (exit 1) when the graph is not static or the parity check fails."""

    check_onnx_options(batch, opset)
    step = progress or (lambda _msg: None)
    img = source.arch.img_size
    step("tracing")
    raw = trace_to_onnx(source.model(), (batch, 3, img, img), opset, dynamic_batch)
    step("simplifying (onnxsim)")
    proto = simplify(raw)
    problems = static_problems(proto, dynamic_batch)
    if problems:
        raise EdgepruneError(
            f"the exported graph is not static: {'; '.join(problems[:3])}",
            "this is a bug in the method's rewrite; please report it",
            exit_code=1,
        )
    data = proto.SerializeToString()
    step(f"parity check ({n_parity_inputs} inputs, onnxruntime)")
    tol = Tolerance(atol, TOLERANCE["fp32"].min_top1)
    parity = check_parity(
        "ONNX output", source, data, batch=batch, n_inputs=n_parity_inputs, tol=tol
    )
    return VerifiedOnnx(
        data=data,
        proto=proto,
        parity=parity,
        batch=batch,
        opset=opset,
        dynamic_batch=dynamic_batch,
    )


def io_spec(source: Source, batch: int | str, dtype: str = "float32") -> dict:
    img, classes = source.arch.img_size, source.arch.num_classes
    return {
        "inputs": [{"name": INPUT_NAME, "shape": [batch, 3, img, img], "dtype": dtype}],
        "outputs": [{"name": OUTPUT_NAME, "shape": [batch, classes], "dtype": dtype}],
    }


def export_onnx(
    source: Source,
    out: Path,
    *,
    batch: int = 1,
    opset: int = MIN_OPSET,
    force: bool = False,
    n_parity_inputs: int = 16,
    atol: float = TOLERANCE["fp32"].atol,
    progress=None,
) -> dict:
    """Export ``source`` to ``out`` (+ ``<out name>.manifest.json``); returns the manifest.

    Nothing is left at ``out`` unless the graph is static and passes the parity check.
    """
    out = Path(out)
    check_onnx_options(batch, opset)
    mpath = prepare_outputs(out, OnnxTarget.accepted_suffixes(), force)
    v = verified_onnx(
        source,
        batch=batch,
        opset=opset,
        n_parity_inputs=n_parity_inputs,
        atol=atol,
        progress=progress,
    )
    manifest = onnx_manifest(source, out, v, batch=batch, opset=opset)
    return write_file_artifact(out, v.data, manifest, mpath)


def onnx_manifest(
    source: Source, out: Path, v: VerifiedOnnx, *, batch: int | str, opset: int
) -> dict:
    """The ``onnx`` target's manifest of the verified graph ``v`` written at ``out`` (the
    file's sha256 is added when it is written). ``batch``: "batch" for a dynamic one."""
    manifest = base_manifest(source, "onnx", out, batch)
    manifest.update(
        {"opset": opset, **io_spec(source, batch), "ops": v.ops(), "parity": v.parity.to_dict()}
    )
    return manifest


@register
class OnnxTarget(Target):
    """The static, verified ONNX itself (the graph every other target starts from)."""

    name = "onnx"
    suffix = ".onnx"
    tolerances = TOLERANCE
    checkable = False  # `edgeprune check` asks what a *target* makes of an ONNX

    def module_artifact(self, module, input_shape: tuple[int, ...]) -> bytes:
        return trace_to_onnx(module, input_shape, MIN_OPSET, output_name="output")

    def export(self, source: Source, req: ExportRequest, out: Path, progress=None) -> ExportResult:
        man = export_onnx(source, out, batch=req.batch, opset=req.opset, **req.common(progress))
        return self.result(out, man)
