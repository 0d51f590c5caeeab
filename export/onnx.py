"""ONNX export: trace the static graph, simplify with onnxsim, verify with onnxruntime."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.atomic import atomic_path, write_json_atomic
from edgeprune.errors import EdgepruneError, ParityError
from edgeprune.export.manifest import base_manifest, prepare_outputs, sha256_file
from edgeprune.source import Source

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DYNAMIC_OPS = ("Shape", "ConstantOfShape", "NonZero")
MIN_OPSET = 17


@dataclass
class Parity:
    max_abs_diff: float
    top1_agreement: float
    inputs: int
    atol: float
    min_top1: float = 1.0
    against: str = "pytorch fp32"
    runtime: str = "onnxruntime"

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_top1

    def to_dict(self) -> dict:
        return {
            "status": "passed" if self.ok else "failed",
            "runtime": self.runtime,
            "against": self.against,
            "max_abs_diff": float(self.max_abs_diff),
            "top1_agreement": float(self.top1_agreement),
            "inputs": self.inputs,
            "atol": self.atol,
            "min_top1_agreement": self.min_top1,
            "passed": self.ok,
        }


@dataclass
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
        from collections import Counter

        return dict(sorted(Counter(n.op_type for n in self.proto.graph.node).items()))


def to_onnx_bytes(
    model: torch.nn.Module, batch: int, img_size: int, opset: int, dynamic_batch: bool = False
) -> bytes:
    """Trace ``model`` at a fixed batch size into ONNX bytes (TorchScript exporter:
    every shape is a constant, which is what TopK/Gather on TensorRT want).

    ``dynamic_batch`` makes dim 0 of the input and output symbolic (``batch``), for a
    TensorRT optimization profile; every other dimension and every TopK K stay constant.
    """
    dummy = torch.zeros(batch, 3, img_size, img_size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            f,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=True,
            dynamic_axes=axes,
            dynamo=False,
        )
    return f.getvalue()


def simplify(model_bytes: bytes):
    """onnxsim the graph; return the ModelProto."""
    import onnx
    import onnxsim

    proto = onnx.load_from_string(model_bytes)
    with contextlib.redirect_stdout(io.StringIO()):
        simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise EdgepruneError("onnxsim could not verify the simplified graph")
    return simplified


def static_graph_problems(proto, dynamic_batch: bool = False) -> list[str]:
    """What makes a graph not static: shape arithmetic, NonZero, a TopK without a
    constant K, a non-constant dimension on an input or output.

    With ``dynamic_batch`` only the batch dimension is relaxed: dim 0 of inputs and
    outputs may be symbolic and the Shape/ConstantOfShape nodes that carry it are
    allowed; NonZero, a computed TopK K and any other dynamic dimension still fail."""
    allowed = {"Shape", "ConstantOfShape"} if dynamic_batch else set()
    from onnx import numpy_helper

    consts = {i.name for i in proto.graph.initializer}
    values: dict[str, np.ndarray] = {
        i.name: numpy_helper.to_array(i) for i in proto.graph.initializer
    }
    for node in proto.graph.node:
        if node.op_type == "Constant":
            consts.update(node.output)
    problems = [
        f"{n.op_type} node '{n.name}'"
        for n in proto.graph.node
        if n.op_type in DYNAMIC_OPS and n.op_type not in allowed
    ]
    for node in proto.graph.node:
        if node.op_type == "TopK":
            k = node.input[1] if len(node.input) > 1 else ""
            if k not in consts:
                problems.append(f"TopK '{node.name}' has a computed K")
            elif k in values and int(values[k].reshape(-1)[0]) > 3840:
                problems.append(f"TopK '{node.name}' has K > 3840 (TensorRT's limit)")
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = list(vi.type.tensor_type.shape.dim)[1 if dynamic_batch else 0 :]
        if any(not d.HasField("dim_value") for d in dims):
            problems.append(f"'{vi.name}' has a dynamic dimension")
    return problems


def parity_inputs(batch: int, img_size: int, n_inputs: int, seed: int = 1234):
    """The random images every parity check uses (same seed: same images for every
    target, so ONNX, engine and ORT figures are comparable)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(-(-n_inputs // batch)):
        yield torch.randn(batch, 3, img_size, img_size, generator=g)


def compare(
    model: torch.nn.Module,
    run_fn,
    batch: int,
    img_size: int,
    n_inputs: int = 16,
    atol: float = 1e-4,
    min_top1: float = 1.0,
    seed: int = 1234,
    runtime: str = "onnxruntime",
) -> Parity:
    """Run PyTorch and ``run_fn`` (numpy in, numpy logits out) on the same images."""
    max_diff, agree, seen = 0.0, 0, 0
    with torch.no_grad():
        for x in parity_inputs(batch, img_size, n_inputs, seed):
            ref = model(x).numpy()
            out = np.asarray(run_fn(x.numpy()), dtype=np.float32).reshape(ref.shape)
            max_diff = max(max_diff, float(np.abs(ref - out).max()))
            agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
            seen += batch
    return Parity(max_diff, agree / seen, seen, atol, min_top1, runtime=runtime)


def parity_check(
    model: torch.nn.Module,
    onnx_bytes: bytes,
    batch: int,
    img_size: int,
    n_inputs: int = 16,
    atol: float = 1e-4,
    seed: int = 1234,
    min_top1: float = 1.0,
) -> Parity:
    """Run PyTorch and onnxruntime on the same ``n_inputs`` random images."""
    from edgeprune.runtimes.onnxruntime import make_session, run

    sess = make_session(onnx_bytes)
    return compare(model, lambda x: run(sess, x), batch, img_size, n_inputs, atol, min_top1, seed)


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
    batch: int = 1,
    opset: int = MIN_OPSET,
    n_parity_inputs: int = 16,
    atol: float = 1e-4,
    dynamic_batch: bool = False,
    progress=None,
) -> VerifiedOnnx:
    """Trace, simplify, check the graph is static and matches PyTorch; in memory only.

    Raises (exit 1) when the graph is not static or the parity check fails."""
    check_onnx_options(batch, opset)
    step = progress or (lambda _msg: None)
    model = source.model()
    img = source.arch.img_size
    step("tracing")
    raw = to_onnx_bytes(model, batch, img, opset, dynamic_batch)
    step("simplifying (onnxsim)")
    proto = simplify(raw)
    problems = static_graph_problems(proto, dynamic_batch)
    if problems:
        raise EdgepruneError(
            f"the exported graph is not static: {'; '.join(problems[:3])}",
            "this is a bug in the method's rewrite; please report it",
            exit_code=1,
        )
    data = proto.SerializeToString()
    step(f"parity check ({n_parity_inputs} inputs, onnxruntime)")
    parity = parity_check(model, data, batch, img, n_parity_inputs, atol)
    if not parity.ok:
        raise ParityError(
            f"ONNX output differs from PyTorch: max |diff| {parity.max_abs_diff:.3g} "
            f"(limit {atol:g}), top-1 agreement {parity.top1_agreement:.1%}",
            "no file was written",
            exit_code=1,
        )
    return VerifiedOnnx(data, proto, parity, batch, opset, dynamic_batch)


def io_spec(source: Source, batch: int | str, dtype: str = "float32") -> dict:
    img, classes = source.arch.img_size, source.arch.num_classes
    return {
        "inputs": [{"name": INPUT_NAME, "shape": [batch, 3, img, img], "dtype": dtype}],
        "outputs": [{"name": OUTPUT_NAME, "shape": [batch, classes], "dtype": dtype}],
    }


def export_onnx(
    source: Source,
    out: Path,
    batch: int = 1,
    opset: int = MIN_OPSET,
    force: bool = False,
    n_parity_inputs: int = 16,
    atol: float = 1e-4,
    progress=None,
) -> dict:
    """Export ``source`` to ``out`` (+ ``<stem>.manifest.json``); returns the manifest.

    Nothing is left at ``out`` unless the graph is static and passes the parity check.
    """
    out = Path(out)
    check_onnx_options(batch, opset)
    mpath = prepare_outputs(out, (".onnx",), force)
    v = verified_onnx(source, batch, opset, n_parity_inputs, atol, progress=progress)
    manifest = base_manifest(source, "onnx", out, batch)
    manifest.update(
        {
            "opset": opset,
            **io_spec(source, batch),
            "ops": v.ops(),
            "parity": v.parity.to_dict(),
        }
    )
    with atomic_path(out) as tmp:
        tmp.write_bytes(v.data)
        manifest["sha256"] = sha256_file(tmp)
        write_json_atomic(mpath, manifest)
    return manifest
