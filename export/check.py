"""``edgeprune check`` and the export's static-graph test: one rule set over an ONNX graph.

A static read of the graph, no runtime needed (``targets.check_file`` is the entry).
Each rule gives findings with a severity: ``error`` (the target refuses it) or
``slow`` (it runs, but badly). The shared rules read what each target declares
(``supported_ops``, ``slow_ops``, ``computed_topk``, ``dynamic_dim``…, see
``export/registry.py``); rules only one target has live in that target's
``graph_rules``. ``static_problems`` reads the same graph facts as "what makes this
graph not static", which every export refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import numpy_helper

from edgeprune.core.errors import EdgepruneError

DYNAMIC_OPS = ("Shape", "ConstantOfShape", "NonZero")

# ops every graph target's converter maps (TensorRT 10's ONNX parser, CoreML's MIL);
# the target modules add their own on top
COMMON_OPS = frozenset(
    {
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
)


@dataclass(frozen=True, kw_only=True)
class Finding:
    severity: str  # "error", "slow", or "fallback" (export/fallbacks.py)
    rule: str
    where: str
    detail: str


def _array(tensor, what: str):
    """A tensor of the graph as numpy; a damaged one (a data type it does not know,
    data that does not fill its shape) is one line, not numpy's error."""
    try:
        return numpy_helper.to_array(tensor)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        msg = " ".join(str(e).split())[:120]
        raise EdgepruneError(
            f"the ONNX model is damaged: {what} '{tensor.name[:80]}' cannot be read "
            f"({type(e).__name__}: {msg})"
        ) from None


class Graph:
    """An ONNX graph read once for the rules: its nodes, I/O and constant values."""

    def __init__(self, proto):
        self.proto = proto
        g = proto.graph
        self.nodes = list(g.node)
        self.io = list(g.input) + list(g.output)
        self.consts = {i.name: _array(i, "initializer") for i in g.initializer}
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value":
                        self.consts[node.output[0]] = _array(a.t, "Constant")
                self.consts.setdefault(node.output[0], None)

    @staticmethod
    def where(node) -> str:
        return f"{node.op_type} '{node.name or (node.output[0] if node.output else '?')}'"

    def topk_k(self, node) -> int | None:
        """K of a TopK node when it is a constant (``None``: computed at run time)."""
        k = node.input[1] if len(node.input) > 1 else ""
        if k not in self.consts:
            return None
        value = self.consts[k]
        if value is None or value.size == 0 or value.dtype.kind not in "iu":
            return -1
        return int(value.reshape(-1)[0])

    def dynamic_dims(self, skip_batch: bool = False):
        """(value info, indices of its non-constant dims) for every graph input/output."""
        for vi in self.io:
            dims = vi.type.tensor_type.shape.dim
            bad = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
            bad = [i for i in bad if not (skip_batch and i == 0)]
            if bad:
                yield vi, bad


def check_graph(proto, target) -> list[Finding]:
    """What in ``proto`` (an ONNX ModelProto) ``target`` (a registered ``Target``: this
    module reads its declared rules, it does not import the registry) rejects or runs
    slowly."""
    graph = Graph(proto)
    out: list[Finding] = []
    for node in graph.nodes:
        where = graph.where(node)
        ops = target.supported_ops
        if node.domain not in target.op_domains or (ops is not None and node.op_type not in ops):
            detail = f"domain '{node.domain}'" if ops is None else f"not supported by {target.name}"
            out.append(Finding(severity="error", rule="unsupported op", where=where, detail=detail))
        if node.op_type in target.slow_ops:
            slow = target.slow_ops[node.op_type]
            out.append(Finding(severity="slow", rule="slow op", where=where, detail=slow))
        if node.op_type == "TopK" and graph.topk_k(node) is None:
            detail = "K is computed at run time"
            rule, severity = "TopK K not constant", target.computed_topk
            out.append(Finding(severity=severity, rule=rule, where=where, detail=detail))
    for vi, bad in graph.dynamic_dims():
        detail = f"dims {bad} are not constant{target.dynamic_dim_note}"
        where, severity = f"'{vi.name}'", target.dynamic_dim
        out.append(Finding(severity=severity, rule="dynamic dimension", where=where, detail=detail))
    return out + target.graph_rules(graph)


def static_problems(proto, dynamic_batch: bool = False) -> list[str]:
    """What makes a graph not static: shape arithmetic, NonZero, a TopK without a
    constant K, a non-constant dimension on an input or output.

    With ``dynamic_batch`` only the batch dimension is relaxed: dim 0 of inputs and
    outputs may be symbolic and the Shape/ConstantOfShape nodes that carry it are
    allowed; NonZero, a computed TopK K and any other dynamic dimension still fail."""
    allowed = {"Shape", "ConstantOfShape"} if dynamic_batch else set()
    graph = Graph(proto)
    problems = [
        f"{n.op_type} node '{n.name}'"
        for n in graph.nodes
        if n.op_type in DYNAMIC_OPS and n.op_type not in allowed
    ]
    problems += [
        f"TopK '{n.name}' has a computed K"
        for n in graph.nodes
        if n.op_type == "TopK" and graph.topk_k(n) is None
    ]
    dims = graph.dynamic_dims(skip_batch=dynamic_batch)
    problems += [f"'{vi.name}' has a dynamic dimension" for vi, _ in dims]
    return problems


def errors_of(findings: list[Finding]) -> list[str]:
    return [f"{f.rule}: {f.where} ({f.detail})" for f in findings if f.severity == "error"]
