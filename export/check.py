"""``edgeprune check``: what in an ONNX graph a target will reject or run slowly.

A static read of the graph, no runtime needed. Each rule gives findings with a
severity: ``error`` (the target refuses it) or ``slow`` (it runs, but badly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeprune.errors import EdgepruneError

TARGETS = ("trt", "coreml", "ort")
TOPK_MAX = 3840  # TensorRT's limit on K

_COMMON = {
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Div",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "PRelu",
    "Range",
    "Reciprocal",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "TopK",
    "Transpose",
    "Unsqueeze",
    "Where",
}
SUPPORTED = {
    # TensorRT 10 ONNX parser (onnx-tensorrt docs/operators.md), the ops a ViT may use
    "trt": _COMMON
    | {
        "ConstantOfShape",
        "CumSum",
        "DequantizeLinear",
        "GatherND",
        "NonZero",
        "QuantizeLinear",
        "ScatterElements",
        "ScatterND",
        "Trilu",
        "OneHot",
        "Mod",
    },
    # ops CoreML's converters map to MIL (the ONNX graph is a proxy: the real path is
    # torch.export → coremltools, which sees the same aten ops)
    "coreml": _COMMON | {"ConstantOfShape", "CumSum", "ScatterElements", "GatherND", "Mod"},
    # ONNX Runtime (Mobile) runs every standard op; only foreign domains are a problem
    "ort": set(),
}
ORT_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml"}
SLOW = {
    "trt": {"NonZero": "data-dependent shape: breaks static engines, runs on the host"},
    "coreml": {},
    "ort": {"NonZero": "data-dependent shape: blocks memory planning"},
}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "slow"
    rule: str
    where: str
    detail: str


def check_file(path: Path, target: str) -> list[Finding]:
    import onnx

    if target not in TARGETS:
        raise EdgepruneError(f"unknown target '{target}'", f"expected one of: {', '.join(TARGETS)}")
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"{path} does not exist")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001  (protobuf raises various errors)
        raise EdgepruneError(f"{path} is not an ONNX model ({type(e).__name__})") from None
    return check_graph(proto, target)


def check_graph(proto, target: str) -> list[Finding]:
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    out: list[Finding] = []
    for node in g.node:
        where = f"{node.op_type} '{node.name or node.output[0]}'"
        if target == "ort":
            if node.domain not in ORT_DOMAINS:
                out.append(Finding("error", "unsupported op", where, f"domain '{node.domain}'"))
        elif node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED[target]:
            out.append(Finding("error", "unsupported op", where, f"not supported by {target}"))
        if node.op_type in SLOW[target]:
            out.append(Finding("slow", "slow op", where, SLOW[target][node.op_type]))
        if node.op_type == "TopK":
            out.extend(_topk(node, where, consts, target))
    out.extend(_dynamic_dims(g, target))
    if target == "coreml":
        io = list(g.input) + list(g.output)
        for vi in io:
            if vi.type.tensor_type.elem_type == TensorProto.INT64:
                out.append(
                    Finding("error", "int64 tensor", f"'{vi.name}'", "CoreML I/O has no int64")
                )
        # Slice bounds of ±INT64_MAX are ONNX's "to the end": CoreML clamps those
        slice_bounds = {i for n in g.node if n.op_type == "Slice" for i in n.input[1:]}
        for name, arr in consts.items():
            if name in slice_bounds or arr.dtype.name != "int64" or not arr.size:
                continue
            if abs(arr).max() > 2**31 - 1:
                out.append(
                    Finding("error", "int64 tensor", f"'{name}'", "int64 value outside int32")
                )
    return out


def _topk(node, where: str, consts: dict, target: str) -> list[Finding]:
    out = []
    k = node.input[1] if len(node.input) > 1 else ""
    if k not in consts:
        sev = "error" if target in ("trt", "coreml") else "slow"
        out.append(Finding(sev, "TopK K not constant", where, "K is computed at run time"))
    elif int(consts[k].reshape(-1)[0]) > TOPK_MAX and target == "trt":
        out.append(
            Finding(
                "error",
                "TopK K too large",
                where,
                f"K={int(consts[k].reshape(-1)[0])} > {TOPK_MAX}",
            )
        )
    if target == "trt":
        sorted_ = next((a.i for a in node.attribute if a.name == "sorted"), 1)
        if not sorted_:
            out.append(Finding("error", "unsorted TopK", where, "TensorRT needs sorted=1"))
    return out


def _dynamic_dims(g, target: str) -> list[Finding]:
    out = []
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        bad = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
        if bad:
            sev = "error" if target == "coreml" else "slow"
            detail = f"dims {bad} are not constant" + (
                " (needs an optimization profile)" if target == "trt" else ""
            )
            out.append(Finding(sev, "dynamic dimension", f"'{vi.name}'", detail))
    return out
