"""ONNX export: trace the static graph, simplify with onnxsim, verify with onnxruntime."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.atomic import atomic_path, check_writable_target, output_lock, write_json_atomic
from edgeprune.errors import EdgepruneError, ParityError
from edgeprune.export.manifest import (
    MANIFEST_VERSION,
    manifest_path,
    now_utc,
    sha256_file,
    versions,
)
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

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.top1_agreement >= 1.0

    def to_dict(self) -> dict:
        return {
            "max_abs_diff": float(self.max_abs_diff),
            "top1_agreement": float(self.top1_agreement),
            "inputs": self.inputs,
            "atol": self.atol,
            "passed": self.ok,
        }


def to_onnx_bytes(model: torch.nn.Module, batch: int, img_size: int, opset: int) -> bytes:
    """Trace ``model`` at a fixed batch size into ONNX bytes (TorchScript exporter:
    every shape is a constant, which is what TopK/Gather on TensorRT want)."""
    dummy = torch.zeros(batch, 3, img_size, img_size)
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


def static_graph_problems(proto) -> list[str]:
    """What makes a graph not static: shape arithmetic, NonZero, a TopK without a
    constant K, a non-constant dimension on an input or output."""
    from onnx import numpy_helper

    consts = {i.name for i in proto.graph.initializer}
    values: dict[str, np.ndarray] = {
        i.name: numpy_helper.to_array(i) for i in proto.graph.initializer
    }
    for node in proto.graph.node:
        if node.op_type == "Constant":
            consts.update(node.output)
    problems = [
        f"{n.op_type} node '{n.name}'" for n in proto.graph.node if n.op_type in DYNAMIC_OPS
    ]
    for node in proto.graph.node:
        if node.op_type == "TopK":
            k = node.input[1] if len(node.input) > 1 else ""
            if k not in consts:
                problems.append(f"TopK '{node.name}' has a computed K")
            elif k in values and int(values[k].reshape(-1)[0]) > 3840:
                problems.append(f"TopK '{node.name}' has K > 3840 (TensorRT's limit)")
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            problems.append(f"'{vi.name}' has a dynamic dimension")
    return problems


def parity_check(
    model: torch.nn.Module,
    onnx_bytes: bytes,
    batch: int,
    img_size: int,
    n_inputs: int = 16,
    atol: float = 1e-4,
    seed: int = 1234,
) -> Parity:
    """Run PyTorch and onnxruntime on the same ``n_inputs`` random images."""
    from edgeprune.runtimes.onnxruntime import make_session, run

    sess = make_session(onnx_bytes)
    g = torch.Generator().manual_seed(seed)
    max_diff, agree, seen = 0.0, 0, 0
    n_batches = -(-n_inputs // batch)
    with torch.no_grad():
        for _ in range(n_batches):
            x = torch.randn(batch, 3, img_size, img_size, generator=g)
            ref = model(x).numpy()
            out = run(sess, x.numpy())
            max_diff = max(max_diff, float(np.abs(ref - out).max()))
            agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
            seen += batch
    return Parity(max_diff, agree / seen, seen, atol)


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
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    if opset < MIN_OPSET:
        raise EdgepruneError(
            f"--opset {opset} is too old",
            f"edgeprune needs opset ≥ {MIN_OPSET} (LayerNormalization)",
        )
    if out.suffix != ".onnx":
        raise EdgepruneError(f"--out {out} should end in .onnx")
    mpath = manifest_path(out)
    check_writable_target(out, force)
    check_writable_target(mpath, force)
    with output_lock(out):
        # re-check under the lock: a concurrent run may have finished meanwhile
        check_writable_target(out, force)
        return _export_onnx_locked(
            source, out, mpath, batch, opset, n_parity_inputs, atol, progress
        )


def _export_onnx_locked(
    source: Source,
    out: Path,
    mpath: Path,
    batch: int,
    opset: int,
    n_parity_inputs: int,
    atol: float,
    progress,
) -> dict:
    step = progress or (lambda _msg: None)

    model = source.model()
    img = source.arch.img_size
    step("tracing")
    raw = to_onnx_bytes(model, batch, img, opset)
    step("simplifying (onnxsim)")
    proto = simplify(raw)
    problems = static_graph_problems(proto)
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
    from collections import Counter

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "target": "onnx",
        "artifact": out.name,
        "created": now_utc(),
        "spec": source.describe(),
        "token_plan": source.plan.to_dict(),
        "gflops": source.flops().to_dict(),
        "batch": batch,
        "opset": opset,
        "inputs": [{"name": INPUT_NAME, "shape": [batch, 3, img, img], "dtype": "float32"}],
        "outputs": [
            {"name": OUTPUT_NAME, "shape": [batch, source.arch.num_classes], "dtype": "float32"}
        ],
        "ops": dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
        "versions": versions(),
        "parity": parity.to_dict(),
        "notes": list(source.notes),
        "method_report": source.method.report(source.config),
    }
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        manifest["sha256"] = sha256_file(tmp)
        write_json_atomic(mpath, manifest)
    return manifest
