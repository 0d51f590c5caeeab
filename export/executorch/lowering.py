"""Faster lowering to XNNPACK, with the same program: four costs of ExecuTorch 1.4's
pipeline that our ViT graphs do not need (``lower`` in ``export/executorch/target.py`` runs
inside ``fast_lowering()``).

Profiled on DeiT-S DynamicViT/0.7 (2-core x86_64, executorch 1.4.1): the lowering
re-traces the whole graph dozens of times (``run_decompositions`` several times, then
17 XNNPACK passes per delegate segment, then ExecuTorch's own edge passes), and four
things make that slow.

1. **Provenance.** Every node a re-trace creates records where it came from
   (``node.meta["from_node"]``, a ``torch.fx.traceback.NodeSource``), and each record
   deep-copies the whole history of its source node. The history grows by one level
   per pass, so the copying grows with passes × nodes × depth: ~15 % of the lowering.
   Here each record keeps its immediate source (the node it was made from, which is
   what ``torch.export`` reads back, ``from_node[-1].name``) and the greatest ancestor
   (what ExecuTorch numbers debug handles by), not the steps between. The program,
   its debug handles included, is the same; only that metadata is shorter.
2. **XNNPACK passes that cannot apply.** The XNNPACK backend runs all its passes on
   every delegate segment, and each is a full re-trace even when it changes nothing;
   the bilinear-upsample pass also pattern-matches every node against traced
   templates. A pass is skipped only when the segment has none of the ops it rewrites
   (``APPLIES`` below: batch norm, PReLU, 1-D convolution, bilinear upsampling, a
   masked attention that could become SDPA, max-pool/max getitems, a concatenation of
   more than five tensors, dim-order or dtype copies, ReLU/hardtanh to fuse, the
   quantize/dequantize nodes of an int8 program). A segment that has such an op gets
   that pass, as before.

3. **Decompositions done four times.** ``torch.export``'s program went through our
   rewrites (one ``run_decompositions``), then ExecuTorch's three (``{}`` to
   functionalise, then twice around the partitioner's preserved ops), each a full
   re-trace. ``one_pass_table`` joins ours with ExecuTorch's pre-partition table, and
   ``_skip_idle_decompositions`` returns a decomposed program as it is when the table
   matches none of its nodes: one re-trace (two where the partitioner refuses an op
   it preserved, which ExecuTorch's last call then decomposes).

4. **Edge passes that cannot apply.** ``to_edge`` and ``to_executorch`` run ExecuTorch's
   own passes (``t`` to ``t_copy``, views to copies, symbolic sizes to tensors, mixed
   dtypes cast, portable dim orders), each a full re-trace; on our static fp32 graphs
   most find nothing. ``_edge_pass_checks`` holds, per pass, exactly the ops it
   rewrites, and a pass is skipped only when the graph has none. (The XNNPACK
   ``ConvertToLinearPass`` and ``ConstPropPass`` are in ``APPLIES`` the same way.)
   DeiT-S SPViT, whole command, A/B in one session: 34–37 s → 27–28 s. The two that
   always find work, aten ops to edge ops and then memory formats to dim orders, run
   as one re-trace (``_edge_ops_with_dim_order``).

All are plain Python patches of the pipeline's classes, active only inside the
context and undone after; if ExecuTorch or torch change the names they rely on, the
lowering runs as it does without them (``EDGEPRUNE_XNNPACK_ALL_PASSES=1`` turns all
of them off). ``tests/test_executorch.py`` checks that a program lowered both ways is the
same, byte for byte.
"""

from __future__ import annotations

import contextlib
import copy
import os
import weakref
from collections.abc import Callable, Iterator

import torch
from torch.export import ExportedProgram
from torch.fx import traceback as fxt


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
    """A convolution on a 3-D input (or one whose input shape is unknown)."""
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


def _root(sources: list) -> object | None:
    """The greatest ancestor in a ``from_node`` list (what ExecuTorch's debug handles
    are numbered by: ``debug_handle_utils.get_greatest_ancestor_node_identifier``)."""
    if not sources:
        return None
    src = sources[-1]
    while src.from_node:
        src = src.from_node[-1]
    return src


def _short_provenance():
    cls = getattr(fxt, "NodeSource", None)
    if cls is None:
        return None
    orig = cls.__init__

    def init(self, node=None, pass_name: str = "", action=None) -> None:
        history = node.meta.pop("from_node", None) if node is not None else None
        try:
            orig(self, node, pass_name, action)
        finally:
            if history is not None:
                node.meta["from_node"] = history
        root = _root(history or [])
        if root is not None:
            self.from_node = [copy.copy(root)]

    cls.__init__ = init
    return lambda: setattr(cls, "__init__", orig)


def _needed_passes_only():
    """XNNPACK's default pass list, each pass checked against the segment as it is just
    before that pass would run (an earlier pass, e.g. the clone removal, can create
    what a later one rewrites)."""
    try:
        from executorch.backends.xnnpack._passes import XNNPACKPassManager
    except ImportError:
        return None
    orig_init, orig_transform = XNNPACKPassManager.__init__, XNNPACKPassManager.transform

    def init(self, exported_program, passes=None) -> None:
        orig_init(self, exported_program, passes)
        self._edgeprune_checked = not passes  # a caller's own list is left alone

    def transform(self):
        if not getattr(self, "_edgeprune_checked", False):
            return orig_transform(self)
        every, ep = list(self.passes), self.exported_program
        try:
            for p in every:
                if _applies(APPLIES.get(p.__name__), ep.graph):
                    self.passes, self._exported_program = [p], ep
                    ep = orig_transform(self)
        finally:
            self.passes = every
        return ep

    XNNPACKPassManager.__init__, XNNPACKPassManager.transform = init, transform

    def restore() -> None:
        XNNPACKPassManager.__init__, XNNPACKPassManager.transform = orig_init, orig_transform

    return restore


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


def _edge_pass_checks() -> dict[type, Callable[[torch.fx.Graph], bool]]:
    """ExecuTorch's own edge passes whose every rewrite is an op of a known kind: pass
    class -> does the graph have one? (Each is a full re-trace, also when it changes
    nothing; on our static fp32 graphs most of them find nothing.)"""
    from executorch.exir.passes.dim_order_ops_registry import DimOrderOpsMap
    from executorch.exir.passes.legalize_portable_dim_order_pass import (
        LegalizePortableDimOrderPass,
    )
    from executorch.exir.passes.memory_format_ops_pass import MemoryFormatOpsPass
    from executorch.exir.passes.normalize_transpose_pass import NormalizeTransposePass
    from executorch.exir.passes.remove_mixed_type_operators import RemoveMixedTypeOperators
    from executorch.exir.passes.replace_broken_ops_with_function_ops_pass import (
        ReplaceBrokenOpsWithFunctionalOpsPass,
    )
    from executorch.exir.passes.sym_to_tensor_pass import SymToTensorPass

    aten = torch.ops.aten
    arithmetic = {
        aten.add.Tensor,
        aten.mul.Tensor,
        aten.sub.Tensor,
        aten.div.Tensor,
        aten.div.Tensor_mode,
        aten.minimum.default,
    }
    return {
        NormalizeTransposePass: _has_target(aten.t.default),
        ReplaceBrokenOpsWithFunctionalOpsPass: _views,
        SymToTensorPass: _symbolic,
        RemoveMixedTypeOperators: _mixed_types(arithmetic),
        LegalizePortableDimOrderPass: _has_target(*LegalizePortableDimOrderPass._target_ops),
        # memory-format edge ops to dim-order ones; idle after the fused op replacement
        # (``_edge_ops_with_dim_order``) has done it in the same re-trace
        MemoryFormatOpsPass: _has_target(*DimOrderOpsMap),
    }


def _edge_ops_with_dim_order():
    """``to_edge`` re-traces the graph once to turn aten ops into edge ops
    (``OpReplacePass``) and, right after it, once more to turn the memory-format ones
    among them into dim-order ops (``MemoryFormatOpsPass``, with dim orders on, as
    ``lower`` leaves them). Here the first does both in its one re-trace: each op is
    replaced by its edge op and handed on to ``MemoryFormatOpsPass``'s own rewrite;
    that pass then finds nothing left and is skipped (``_edge_pass_checks``)."""
    try:
        import executorch.exir.program._program as program
        from executorch.exir.passes.memory_format_ops_pass import MemoryFormatOpsPass
        from executorch.exir.passes.replace_aten_with_edge_pass import (
            aten_to_edge,
            should_lower_to_edge,
        )
    except ImportError:
        return None
    orig = getattr(program, "OpReplacePass", None)
    if orig is None:
        return None

    class OpReplaceWithDimOrder(MemoryFormatOpsPass):
        def call_operator(self, op, args, kwargs, meta):
            if should_lower_to_edge(op):
                op = aten_to_edge(op)
            return super().call_operator(op, args, kwargs, meta)

    program.OpReplacePass = OpReplaceWithDimOrder
    return lambda: setattr(program, "OpReplacePass", orig)


def _skip_idle_edge_passes():
    """Each pass of ``_edge_pass_checks`` returns the graph as it is when the graph has
    nothing it rewrites."""
    try:
        checks = _edge_pass_checks()
        from torch.fx.passes.infra.pass_base import PassResult
    except (ImportError, AttributeError):
        return None
    undo = []
    for cls, applies in checks.items():
        own, inherited = cls.__dict__.get("__call__"), cls.__call__

        def call(self, graph_module, _cls=cls, _check=applies, _orig=inherited):
            if type(self) is _cls and not _applies(_check, graph_module.graph):
                return PassResult(graph_module, False)
            return _orig(self, graph_module)

        cls.__call__ = call
        undo.append((cls, own))

    def restore() -> None:
        for cls, own in undo:
            if own is None:
                del cls.__call__
            else:
                cls.__call__ = own

    return restore


def _skip_idle_decompositions():
    """A ``run_decompositions`` on a program that is itself the output of one, with a
    table that has none of its ops, returns it as it is (ExecuTorch calls it three
    times after ours: ``{}`` to functionalise, then twice around the partitioner's
    preserved ops; each is a full re-trace, and on our decomposed, functional graphs
    the ones whose table matches no node change nothing)."""


    orig = ExportedProgram.run_decompositions
    done: weakref.WeakSet = weakref.WeakSet()

    def run(self, decomp_table=None, decompose_custom_triton_ops=False):
        if (
            self in done
            and decomp_table is not None
            and not decompose_custom_triton_ops
            and not any(n.target in decomp_table for n, _ in _calls(self.graph))
        ):
            return self
        out = orig(self, decomp_table, decompose_custom_triton_ops)
        done.add(out)
        return out

    ExportedProgram.run_decompositions = run
    return lambda: setattr(ExportedProgram, "run_decompositions", orig)


def one_pass_table(ep, ours: dict, partitioner) -> dict:
    """``ours`` joined with the table ExecuTorch decomposes with before partitioning
    (its default table minus the ops ``partitioner`` keeps whole), ours taking
    precedence: one ``run_decompositions`` does what ours and ExecuTorch's first did
    one after the other, and ExecuTorch's then finds nothing to decompose (see
    ``_skip_idle_decompositions``). ``ours`` alone where ExecuTorch's names moved."""
    if os.environ.get("EDGEPRUNE_XNNPACK_ALL_PASSES"):
        return ours
    try:
        from executorch.exir.program._program import _remove_invalid_ops_for_not_decompose
        from executorch.exir.tracer import _default_decomposition_table
    except ImportError:
        return ours
    keep, _ = partitioner.ops_to_not_decompose(ep)
    table = _default_decomposition_table()
    for op in _remove_invalid_ops_for_not_decompose(keep):
        table.pop(op, None)
    table.update(ours)
    return table


@contextlib.contextmanager
def fast_lowering() -> Iterator[None]:
    """The speed-ups for the duration of one lowering (nothing when
    ``EDGEPRUNE_XNNPACK_ALL_PASSES`` is set)."""
    if os.environ.get("EDGEPRUNE_XNNPACK_ALL_PASSES"):
        yield
        return
    with contextlib.ExitStack() as undo:
        for patch in (
            _short_provenance,
            _needed_passes_only,
            _skip_idle_decompositions,
            _skip_idle_edge_passes,
            _edge_ops_with_dim_order,
        ):
            restore = patch()
            if restore is not None:
                undo.callback(restore)
        yield
