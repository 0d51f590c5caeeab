"""The one place edgeprune patches library internals: five speed-ups of ExecuTorch's
lowering to XNNPACK that leave the program the same, byte for byte (``lower`` in
``export/executorch/target.py`` runs inside ``patched()``; which pass a graph needs is
decided in ``export/executorch/lowering.py``).

Why patches. Profiled on DeiT-S DynamicViT/0.7 (2-core x86_64, executorch 1.4.1), the
lowering re-traces the whole graph dozens of times: ``run_decompositions`` several
times, then 17 XNNPACK passes per delegate segment, then ExecuTorch's own edge passes,
most of which find nothing to do on our static fp32 graphs. The public API cannot
skip any of them: ``to_edge_transform_and_lower`` takes our own passes
(``transform_passes``, used for edgeprune's rewrites) and an ``EdgeCompileConfig``
(``_check_ir_validity=False`` is used), but ``XnnpackBackend.preprocess`` always builds
``XNNPACKPassManager`` with its whole pass list (its only compile spec, the
dynamic-quantization one, narrows it to ``ConvertToLinearPass``, another program), the
decompositions and the edge passes are fixed inside
``_gen_edge_manager_for_partitioners`` and ``_generate_edge_program``, and
``EdgeCompileConfig._skip_dim_order`` would change the program. DeiT-S SPViT, whole
command, A/B in one session: 34–37 s → 27–28 s (executorch 1.4.1); 52–54 s → 24 s,
the lowering step 37–39 s → 9–10 s (executorch 1.5.1, torch 2.14.1; two runs each).

What is modified, only while ``patched()`` is open (each is put back when it closes,
also on an error):

1. ``torch.fx.traceback.NodeSource.__init__``: provenance. Every node a re-trace
   creates records where it came from (``node.meta["from_node"]``), and each record
   deep-copies the whole history of its source node; the history grows by one level
   per pass (~15 % of the lowering). Here a record keeps its immediate source (what
   ``torch.export`` reads back, ``from_node[-1].name``) and the greatest ancestor (what
   ExecuTorch numbers debug handles by), not the steps between.
2. ``executorch.backends.xnnpack.xnnpack_preprocess.XNNPACKPassManager``, the name the
   XNNPACK backend builds its pass manager by: a subclass whose ``transform`` runs each
   pass of the default list only where ``needed`` says the segment, as it is just
   before that pass, has something for it (the class itself is not touched).
3. ``torch.export.ExportedProgram.run_decompositions``: a program that is itself the
   output of one is returned as it is when the table matches none of its nodes
   (ExecuTorch calls it three times after ours, each a full re-trace).
   ``decomposition_table`` joins our table with ExecuTorch's pre-partition one, so
   that one call does the work of ours and ExecuTorch's first.
4. ``__call__`` of six ExecuTorch edge passes (``EDGE_PASSES``): the graph is returned
   as it is when ``needed`` says it has nothing the pass rewrites.
5. ``executorch.exir.program._program.OpReplacePass``: aten ops to edge ops and then
   memory formats to dim orders (``MemoryFormatOpsPass``) in one re-trace instead of
   two; ``MemoryFormatOpsPass`` then finds nothing and is skipped (4).

Written against executorch 1.4 and torch 2.13, ported unchanged to executorch 1.5 and
torch 2.14 (``WRITTEN_FOR``): of what they rely on, 1.5 changed only
``_gen_edge_manager_for_partitioners`` (each partitioner's
``transform_for_pre_decomposition`` first, which XNNPACK's leaves as the default that
hands the program back as it is, so patch 3 still knows it; and a second decomposition
skipped when idle, on the path XNNPACK's partitioner does not take) and
``Conv1dUnsqueezePass`` (a 1-D convolution told by its 3-D weight, not its stride: for
a valid one, the 3-D input ``lowering.py`` checks). On other versions
``patched()`` changes nothing and ``unsupported()`` says why (``lower`` reports it as a
progress line); ``EDGEPRUNE_XNNPACK_ALL_PASSES=1`` turns the patches off too.
``RELIES_ON`` names every library function and class whose source the patches (and the
checks in ``lowering.py``) were written from: ``tests/test_xnnpack_patch.py`` pins a
hash of each one's source and fails when one changes, and
``tests/test_executorch.py`` checks that a program lowered both ways is the same, byte
for byte.
"""

from __future__ import annotations

import contextlib
import copy
import os
import weakref
from collections.abc import Callable, Iterator
from importlib import metadata

import torch
from torch.export import ExportedProgram
from torch.fx.passes.infra.pass_base import PassResult
from torch.fx.traceback import NodeSource

from edgeprune.core.backends.optional import import_executorch

# major.minor of the versions the patches were written (and RELIES_ON hashed) against
WRITTEN_FOR = {"executorch": "1.5", "torch": "2.14"}
OFF = "EDGEPRUNE_XNNPACK_ALL_PASSES"  # set: every patch off (the lowering as shipped)

# ExecuTorch's edge passes that ``patched()`` skips on an idle graph: class -> its module
# under executorch.exir.passes
EDGE_PASSES = {
    "NormalizeTransposePass": "normalize_transpose_pass",
    "ReplaceBrokenOpsWithFunctionalOpsPass": "replace_broken_ops_with_function_ops_pass",
    "SymToTensorPass": "sym_to_tensor_pass",
    "RemoveMixedTypeOperators": "remove_mixed_type_operators",
    "LegalizePortableDimOrderPass": "legalize_portable_dim_order_pass",
    "MemoryFormatOpsPass": "memory_format_ops_pass",
}
_XNNPACK = "executorch.backends.xnnpack._passes"
_PROGRAM = "executorch.exir.program._program"
# what the patches replace or assume, and the passes whose rewrites lowering.py's checks
# describe (each by the dotted name it is reached by)
RELIES_ON = (
    "torch.fx.traceback.NodeSource.__init__",
    "torch.export.exported_program.ExportedProgram.run_decompositions",
    f"{_XNNPACK}.XNNPACKPassManager",
    "executorch.backends.xnnpack.xnnpack_preprocess.XnnpackBackend.preprocess",
    f"{_PROGRAM}._gen_edge_manager_for_partitioners",
    f"{_PROGRAM}._generate_edge_program",
    f"{_PROGRAM}._remove_invalid_ops_for_not_decompose",
    "executorch.exir.backend.partitioner.Partitioner.transform_for_pre_decomposition",
    "executorch.exir.tracer._default_decomposition_table",
    "executorch.exir.passes.replace_aten_with_edge_pass.OpReplacePass",
    "executorch.exir.passes.dim_order_ops_registry.DimOrderOpsMap",
    *(f"executorch.exir.passes.{module}.{name}" for name, module in EDGE_PASSES.items()),
    *(
        f"{_XNNPACK}.{name}"
        for name in (
            "ConvertToUpsampleBilinear2d",
            "ConvertToSDPAPass",
            "ConvertToLinearPass",
            "ConstPropPass",
            "FuseBatchNormPass",
            "DecomposeBatchNorm",
            "Conv1dUnsqueezePass",
            "PReLUReshapePass",
            "RemoveGetItemPass",
            "DecomposeConcatenate",
            "DimOrderOpsRevertPass",
            "RemoveRedundantCopyPass",
            "FuseActivationPass",
            "PropagateCustomMetaPass",
            "InsertPadQDQPass",
        )
    ),
)

# needed(pass class, graph): may the pass find something to rewrite in the graph?
Needed = Callable[[type, torch.fx.Graph], bool]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def unsupported() -> str | None:
    """Why the patches cannot apply here (another executorch or torch than they were
    written for), or None."""
    for package, written in WRITTEN_FOR.items():
        here = _version(package)
        if here is None or here.split(".")[:2] != written.split("."):
            return f"{package} {here}; they were written for {package} {written}.x"
    return None


def active() -> bool:
    """Whether ``patched()`` patches anything here."""
    return not os.environ.get(OFF) and unsupported() is None


def edge_passes() -> dict[str, type]:
    """The classes of ``EDGE_PASSES``, by name."""
    return {
        name: getattr(import_executorch(f"exir.passes.{module}"), name)
        for name, module in EDGE_PASSES.items()
    }


def dim_order_ops() -> frozenset:
    """The memory-format edge ops ``MemoryFormatOpsPass`` rewrites into dim-order ones."""
    registry = import_executorch("exir.passes.dim_order_ops_registry")
    return frozenset(registry.DimOrderOpsMap)


def decomposition_table(ep: ExportedProgram, ours: dict, partitioner) -> dict:
    """``ours`` joined with the table ExecuTorch decomposes with before partitioning
    (its default table minus the ops ``partitioner`` keeps whole), ours taking
    precedence: one ``run_decompositions`` does what ours and ExecuTorch's first did
    one after the other, and ExecuTorch's then finds nothing to decompose (patch 3).
    ``ours`` alone where the patches are off."""
    if not active():
        return ours
    program = import_executorch("exir.program._program")
    keep, _ = partitioner.ops_to_not_decompose(ep)
    table = import_executorch("exir.tracer")._default_decomposition_table()
    for op in program._remove_invalid_ops_for_not_decompose(keep):
        table.pop(op, None)
    table.update(ours)
    return table


@contextlib.contextmanager
def patched(needed: Needed) -> Iterator[bool]:
    """The five patches for the duration of one lowering; yields whether they are on
    (not where ``unsupported()`` or ``EDGEPRUNE_XNNPACK_ALL_PASSES`` says otherwise)."""
    if not active():
        yield False
        return
    with contextlib.ExitStack() as undo:
        for patch in (
            _short_provenance,
            _needed_xnnpack_passes,
            _skip_idle_decompositions,
            _skip_idle_edge_passes,
            _edge_ops_with_dim_order,
        ):
            undo.callback(patch(needed))
        yield True


def _root(sources: list) -> object | None:
    """The greatest ancestor in a ``from_node`` list (what ExecuTorch's debug handles
    are numbered by: ``debug_handle_utils.get_greatest_ancestor_node_identifier``)."""
    if not sources:
        return None
    src = sources[-1]
    while src.from_node:
        src = src.from_node[-1]
    return src


def _short_provenance(_needed: Needed) -> Callable[[], None]:
    """Patch 1: a provenance record keeps its source and its greatest ancestor."""
    orig = NodeSource.__init__

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

    NodeSource.__init__ = init
    return lambda: setattr(NodeSource, "__init__", orig)


def _needed_xnnpack_passes(needed: Needed) -> Callable[[], None]:
    """Patch 2: the XNNPACK backend's pass manager runs only the passes a segment needs."""
    preprocess = import_executorch("backends.xnnpack.xnnpack_preprocess")
    base = preprocess.XNNPACKPassManager

    class NeededPassesOnly(base):
        """XNNPACK's default pass list, each pass checked against the segment as it is
        just before that pass would run (an earlier pass, e.g. the clone removal, can
        create what a later one rewrites). A caller's own list runs as given."""

        def __init__(self, exported_program, passes=None) -> None:
            super().__init__(exported_program, passes)
            self._default_list = not passes

        def transform(self):
            if not self._default_list:
                return super().transform()
            every, ep = list(self.passes), self.exported_program
            try:
                for p in every:
                    if needed(p, ep.graph):
                        self.passes, self._exported_program = [p], ep
                        ep = super().transform()
            finally:
                self.passes = every
            return ep

    preprocess.XNNPACKPassManager = NeededPassesOnly
    return lambda: setattr(preprocess, "XNNPACKPassManager", base)


def _calls_any(graph: torch.fx.Graph, table: dict) -> bool:
    return any(n.op == "call_function" and n.target in table for n in graph.nodes)


def _skip_idle_decompositions(_needed: Needed) -> Callable[[], None]:
    """Patch 3: ``run_decompositions`` on a decomposed program, with a table that has
    none of its ops, returns the program as it is."""
    orig = ExportedProgram.run_decompositions
    done: weakref.WeakSet = weakref.WeakSet()

    def run(self, decomp_table=None, decompose_custom_triton_ops=False):
        if (
            self in done
            and decomp_table is not None
            and not decompose_custom_triton_ops
            and not _calls_any(self.graph, decomp_table)
        ):
            return self
        out = orig(self, decomp_table, decompose_custom_triton_ops)
        done.add(out)
        return out

    ExportedProgram.run_decompositions = run
    return lambda: setattr(ExportedProgram, "run_decompositions", orig)


def _skip_idle_edge_passes(needed: Needed) -> Callable[[], None]:
    """Patch 4: each pass of ``EDGE_PASSES`` (the class itself, not a subclass) returns
    the graph as it is when ``needed`` says it has nothing the pass rewrites."""
    undo = []
    for cls in edge_passes().values():
        own, inherited = cls.__dict__.get("__call__"), cls.__call__

        def call(self, graph_module, _cls=cls, _orig=inherited):
            if type(self) is _cls and not needed(_cls, graph_module.graph):
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


def _edge_ops_with_dim_order(_needed: Needed) -> Callable[[], None]:
    """Patch 5: ``to_edge`` re-traces the graph once to turn aten ops into edge ops
    (``OpReplacePass``) and, right after it, once more to turn the memory-format ones
    among them into dim-order ops (``MemoryFormatOpsPass``, with dim orders on, as
    ``lower`` leaves them). Here the first does both in its one re-trace: each op is
    replaced by its edge op and handed on to ``MemoryFormatOpsPass``'s own rewrite."""
    program = import_executorch("exir.program._program")
    edge = import_executorch("exir.passes.replace_aten_with_edge_pass")
    memory_format = import_executorch("exir.passes.memory_format_ops_pass")
    orig = program.OpReplacePass

    class OpReplaceWithDimOrder(memory_format.MemoryFormatOpsPass):
        def call_operator(self, op, args, kwargs, meta):
            if edge.should_lower_to_edge(op):
                op = edge.aten_to_edge(op)
            return super().call_operator(op, args, kwargs, meta)

    program.OpReplacePass = OpReplaceWithDimOrder
    return lambda: setattr(program, "OpReplacePass", orig)
