"""Which passes of ExecuTorch's lowering to XNNPACK a graph needs: for each pass that
``xnnpack_patch.py`` may skip, the ops it rewrites, as a check of whether a graph has
one. ``fast_lowering()`` runs a lowering (``lower`` in ``export/executorch/target.py``)
with those patches, which skip a pass on a graph that has none of its ops.

1. **XNNPACK passes** (``APPLIES``, by pass class name). The XNNPACK backend runs all
   its passes on every delegate segment, and each is a full re-trace even when it
   changes nothing; the bilinear-upsample pass also pattern-matches every node against
   traced templates. A pass is skipped only when the segment has none of the ops it
   rewrites: batch norm, PReLU, 1-D convolution, bilinear upsampling, a masked
   attention that could become SDPA, max-pool/max getitems, a concatenation of more
   than five tensors, dim-order or dtype copies, ReLU/hardtanh to fuse, the
   quantize/dequantize nodes of an int8 program, an ``mm`` that ``ConvertToLinearPass``
   turns into a linear, a computation on constants alone that ``ConstPropPass`` folds.
   A segment that has such an op gets that pass, as before.
2. **ExecuTorch's own edge passes** (``_edge_pass_checks``, by pass class): ``t`` to
   ``t_copy``, views to copies, symbolic sizes to tensors, mixed dtypes cast, portable
   dim orders, memory formats to dim orders; each holds exactly the ops it rewrites.

A graph with control flow always gets every pass: the checks read the top-level graph
only, and passes walk into the branches.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch

from edgeprune.export.executorch import xnnpack_patch


def _calls(graph: torch.fx.Graph) -> Iterator[tuple[torch.fx.Node, str]]:
    """(node, op name) for every call in the graph (edge ops: ``aten.cat.default``)."""
    for n in graph.nodes:
        if n.op == "call_function":
            yield n, getattr(n.target, "__name__", str(n.target))


def _name(node: object) -> str:
    return getattr(getattr(node, "target", None), "__name__", "")


def _softmax_after_add(graph: torch.fx.Graph) -> bool:
    """A softmax whose input is an addition: the masked attention of XNNPACK's SDPA
    templates (they all take a mask; attention without one never matches)."""
    return any(
        "softmax" in name and n.args and "add" in _name(n.args[0]) for n, name in _calls(graph)
    )


def _long_cat(graph: torch.fx.Graph) -> bool:
    return any(name.endswith("cat.default") and len(n.args[0]) > 5 for n, name in _calls(graph))


def _has(*fragments: str) -> Callable[[torch.fx.Graph], bool]:
    def check(graph: torch.fx.Graph) -> bool:
        return any(f in name for _, name in _calls(graph) for f in fragments)

    return check


def _conv1d(graph: torch.fx.Graph) -> bool:
    """A convolution on a 3-D input (or one whose input shape is unknown): for a valid
    convolution the same as a 3-D weight, which is how the pass tells 1-D ones."""
    for n, name in _calls(graph):
        if "convolution" in name:
            val = n.args[0].meta.get("val") if isinstance(n.args[0], torch.fx.Node) else None
            if val is None or val.dim() == 3:
                return True
    return False


def _masked_attention(graph: torch.fx.Graph) -> bool:
    """XNNPACK's SDPA templates (``partition/graphs/sdpa.py``) are a softmax over a
    masked sum whose guard for fully masked rows is ``eq``, ``logical_not``, ``any`` and
    ``where``: a segment without all of them cannot match."""
    return _softmax_after_add(graph) and all(
        _has(op)(graph) for op in ("logical_not", "any", "where")
    )


_TRANSPOSES = ("aten.t_copy.default", "aten.permute_copy.default")


def _linear_sources(graph: torch.fx.Graph) -> bool:
    """What ``ConvertToLinearPass`` rewrites: an ``mm``/``addmm``/``bmm`` traced from a
    Linear, or an ``mm``/``addmm`` of a transposed weight, into ``linear``;
    ``view_copy`` nodes between a dequantize and a ``linear``; a ``view_copy`` after a
    ``linear`` that keeps its shape."""
    for n, name in _calls(graph):
        if name.endswith("mm.default") and _from_linear(n):
            return True
        weight = {"aten.mm.default": 1, "aten.addmm.default": 2}.get(name)
        if weight is not None and _name(n.args[weight]).endswith(_TRANSPOSES):
            return True
        if name.endswith("aten.linear.default"):
            if _dequantize_behind_views(n.args[0]):
                return True
            user = next(iter(n.users)) if len(n.users) == 1 else None
            if user is not None and "view_copy" in _name(user) and _same_shape(n, user):
                return True  # a view_copy that does not change the shape is dropped
    return False


_LINEAR = (torch.nn.Linear, torch.nn.functional.linear)


def _from_linear(node: torch.fx.Node) -> bool:
    """Whether ``get_source_partitions(graph, [Linear, linear])`` puts ``node`` in a Linear
    partition: by its ``source_fn_stack``; without one (non-strict ``torch.export``), by
    the innermost module it was traced in, as that function falls back to (a Linear
    class or subclass, or the class's dotted name). Unknown provenance counts as yes."""
    stack = node.meta.get("source_fn_stack")
    if stack:
        return stack[-1][1] in _LINEAR
    modules = node.meta.get("nn_module_stack")
    if not modules:
        return True
    _, cls = list(modules.values())[-1]
    if isinstance(cls, type):
        return issubclass(cls, torch.nn.Linear)
    return cls in (torch.nn.Linear, "torch.nn.modules.linear.Linear")


def _dequantize_behind_views(node: object) -> bool:
    """A dequantize reached from ``node`` through ``view_copy`` nodes only."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function":
        name = _name(node)
        if "dequantize" in name:
            return True
        if "view_copy" not in name:
            return False
        node = node.args[0]
    return False


def _same_shape(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    if not isinstance(va, torch.Tensor) or not isinstance(vb, torch.Tensor):
        return True  # unknown: treat as a match
    return tuple(va.shape) == tuple(vb.shape)


def _foldable(graph: torch.fx.Graph) -> bool:
    """What ``ConstPropPass`` folds: an op (not a quantize/dequantize) whose inputs are
    all constants. In its re-trace parameters are fake tensors; only ``get_attr``
    constants and literals are real, so a fold has to start at an op with no other
    input."""
    for n, name in _calls(graph):
        if not name.endswith(_QDQ) and all(a.op == "get_attr" for a in n.all_input_nodes):
            return True
    return False


# the quantize/dequantize ops ConstPropPass leaves alone (its propogate_quant=False)
_QDQ = tuple(
    f"{q}quantize_per_{kind}.default" for q in ("", "de") for kind in ("tensor", "channel")
)


# pass class name -> does the segment have anything this pass rewrites?
APPLIES: dict[str, Callable[[torch.fx.Graph], bool]] = {
    "ConvertToUpsampleBilinear2d": _has("upsample", "_unsafe_index", "index.Tensor"),
    "ConvertToSDPAPass": _masked_attention,
    "ConvertToLinearPass": _linear_sources,
    "ConstPropPass": _foldable,
    "FuseBatchNormPass": _has("batch_norm"),
    "DecomposeBatchNorm": _has("batch_norm"),
    "Conv1dUnsqueezePass": _conv1d,
    "PReLUReshapePass": _has("prelu"),
    "RemoveGetItemPass": _has("max_pool2d_with_indices", "max.dim"),
    "DecomposeConcatenate": _long_cat,
    "DimOrderOpsRevertPass": _has("dim_order"),
    "RemoveRedundantCopyPass": _has("_to_copy"),
    "FuseActivationPass": _has("relu", "hardtanh"),
    "PropagateCustomMetaPass": _has("quantize"),  # q/dq nodes: int8 programs
    "InsertPadQDQPass": _has("quantize"),
}


_CONTROL_FLOW = ("cond", "while_loop", "map_impl", "scan")


def _applies(check: Callable[[torch.fx.Graph], bool] | None, graph: torch.fx.Graph) -> bool:
    """Run the pass unless ``check`` says the graph has nothing for it. A graph with
    control flow always gets it: the checks read the top-level graph only, and passes
    walk into the branches."""
    if check is None or any(name in _CONTROL_FLOW for _, name in _calls(graph)):
        return True
    return check(graph)


def _has_target(*ops: object) -> Callable[[torch.fx.Graph], bool]:
    wanted = set(ops)
    return lambda graph: any(n.target in wanted for n, _ in _calls(graph))


def _views(graph: torch.fx.Graph) -> bool:
    return any(getattr(n.target, "is_view", False) for n, _ in _calls(graph))


def _symbolic(graph: torch.fx.Graph) -> bool:
    sym = (torch.SymInt, torch.SymFloat, torch.SymBool)
    return any(isinstance(n.meta.get("val"), sym) for n in graph.nodes)


def _mixed_types(ops: set) -> Callable[[torch.fx.Graph], bool]:
    """An arithmetic op of ``ops`` whose operands are not all tensors of one dtype (or
    an integer division): what ``RemoveMixedTypeOperators`` would cast. Any operand
    that is not a node with a tensor value counts as mixed."""

    def check(graph: torch.fx.Graph) -> bool:
        for n, _ in _calls(graph):
            if n.target not in ops:
                continue
            vals = [a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in n.args]
            if not all(isinstance(v, torch.Tensor) for v in vals):
                return True
            dtypes = {v.dtype for v in vals}
            if len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
                return True
        return False

    return check


@functools.cache
def _edge_pass_checks() -> dict[type, Callable[[torch.fx.Graph], bool]]:
    """ExecuTorch's own edge passes whose every rewrite is an op of a known kind: pass
    class -> does the graph have one? (Each is a full re-trace, also when it changes
    nothing; on our static fp32 graphs most of them find nothing.)"""
    passes = xnnpack_patch.edge_passes()
    aten = torch.ops.aten
    arithmetic = {
        aten.add.Tensor,
        aten.mul.Tensor,
        aten.sub.Tensor,
        aten.div.Tensor,
        aten.div.Tensor_mode,
        aten.minimum.default,
    }
    legalize = passes["LegalizePortableDimOrderPass"]
    return {
        passes["NormalizeTransposePass"]: _has_target(aten.t.default),
        passes["ReplaceBrokenOpsWithFunctionalOpsPass"]: _views,
        passes["SymToTensorPass"]: _symbolic,
        passes["RemoveMixedTypeOperators"]: _mixed_types(arithmetic),
        legalize: _has_target(*legalize._target_ops),
        # memory-format edge ops to dim-order ones; idle after the fused op replacement
        # (xnnpack_patch, patch 5) has done it in the same re-trace
        passes["MemoryFormatOpsPass"]: _has_target(*xnnpack_patch.dim_order_ops()),
    }


def needed(pass_cls: type, graph: torch.fx.Graph) -> bool:
    """Whether ``pass_cls`` (an XNNPACK pass or one of ExecuTorch's edge passes) may find
    something to rewrite in ``graph``: yes unless its check says no."""
    check = APPLIES.get(pass_cls.__name__) or _edge_pass_checks().get(pass_cls)
    return _applies(check, graph)


@contextlib.contextmanager
def fast_lowering() -> Iterator[bool]:
    """The lowering with the passes a graph does not need skipped (``xnnpack_patch``);
    yields whether the patches are on (off: another executorch or torch version, or
    ``EDGEPRUNE_XNNPACK_ALL_PASSES`` set)."""
    with xnnpack_patch.patched(needed) as on:
        yield on
