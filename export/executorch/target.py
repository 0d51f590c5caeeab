"""ExecuTorch target: ``torch.export`` → XNNPACK-friendly rewrites →
``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` →
``.to_executorch()`` → ``m.pte`` (fp32; ``--int8``: PT2E-quantized first, see
``export/executorch/int8.py``), checked in the ExecuTorch runtime on this machine against
PyTorch on the same seeded inputs as every other target.

XNNPACK's partitioner takes linear/matmul/softmax/GELU/elementwise ops, ``mean.dim`` only
over the two inner dims of a 4-D tensor, and no LayerNorm, ``select``, ``log_softmax``,
``sum``, TopK or gather. Every op it does not take runs on a portable kernel and cuts
the program into another delegate segment. Exported as is, dense DeiT-T has 62
segments (LayerNorm ×25, the ``select`` of q/k/v ×36 and the no-op ``expand`` that
``matmul`` decomposes into ×49 outside) and DynamicViT/0.7 74. The rewrites below are
confined to this target (the ONNX graph and the other targets do not see them) and
keep the function: LayerNorm as mean/sub/mul/rsqrt with the means as 4-D inner-dim
means, other means and sums the same way, ``log_softmax`` as ``log(softmax)``,
``select`` as ``slice`` + ``view``, ``unsqueeze``/``squeeze`` as views, the L2 norm as
sqrt of a mean (ToMe's metric), a max over the last dim as a max-pool with the rows as
channels (ToMe's best match), no-op
``expand`` removed, and every computation on weights alone (SPViT's stacked per-head
weights, DynamicViT's split first layer) folded into constants. Token operations are
traced in their XNNPACK form (``methods/tokenops.py``): TopK and the row copies
(``index_select``) run on portable kernels between delegate segments, everything else
of the selectors inside XNNPACK. The manifest records the segments and the ops outside.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.fx.passes.infra.pass_base import PassResult

from edgeprune.core.backends.executorch_kernels import build, source_name
from edgeprune.core.backends.optional import (
    EXECUTORCH_HINT,
    executorch_installed,
    import_executorch,
)
from edgeprune.core.backends.runner import get_runner
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.core.methods.tokenops import edgeprune_kernels, prepare_trace, xnnpack_form
from edgeprune.core.source import Source
from edgeprune.export import fallbacks
from edgeprune.export.executorch import xnnpack_patch
from edgeprune.export.executorch.int8 import QUANTIZER, Calibration, calibration_for, quantize
from edgeprune.export.executorch.lowering import fast_lowering
from edgeprune.export.manifest import base_manifest, prepare_outputs, write_file_artifact
from edgeprune.export.onnx import io_spec
from edgeprune.export.parity import check_parity, compare
from edgeprune.export.registry import (
    INT8,
    ExportRequest,
    ExportResult,
    Target,
    TargetOption,
    Tolerance,
    register,
)

# int8 against PyTorch fp32 (export/registry.py INT8): judged by the mean KL(fp32 ‖ int8)
# of the softmax outputs and by top-1 agreement; max |diff| (10, in logits) only
# catches a blown-up program
TOLERANCE = {"fp32": Tolerance(1e-4, 1.0), "int8": INT8}
SUFFIX = ".pte"


def require_executorch() -> None:
    """Raise one line (exit 2) when the ExecuTorch exporter cannot run here."""

    if not executorch_installed():
        raise MissingRuntimeError(
            "--target executorch needs the executorch package", EXECUTORCH_HINT
        )


# ---- the rewrites: an ATen decomposition table applied before lowering -------------
def _aten():
    return torch.ops.aten


def _is_inner_mean(x: torch.Tensor, dims, keepdim: bool) -> bool:
    return x.dim() == 4 and sorted(d % 4 for d in dims) == [2, 3] and keepdim


def _mean(x: torch.Tensor, dims, keepdim: bool = False, dtype=None):
    """``mean.dim`` over any dims as XNNPACK takes it: the reduced dims moved to the end,
    viewed as ``1×rest×reduced×1`` and averaged over the two inner dims."""
    if dtype is not None or dims is None:
        return NotImplemented
    dims = [dims] if isinstance(dims, int) else list(dims)
    if _is_inner_mean(x, dims, keepdim):
        return NotImplemented  # already XNNPACK's form: traced as is
    nd = x.dim()
    red = sorted(d % nd for d in dims)
    keep = [d for d in range(nd) if d not in red]
    t = x.permute(*keep, *red) if keep + red != list(range(nd)) else x
    rest = 1
    for d in keep:
        rest *= x.shape[d]
    r = 1
    for d in red:
        r *= x.shape[d]
    m = t.reshape(1, rest, r, 1).mean(dim=(2, 3), keepdim=True)
    shape = [1 if d in red else x.shape[d] for d in range(nd)]
    out = m.reshape(shape)
    return out if keepdim else out.reshape([x.shape[d] for d in keep])


def _sum(x: torch.Tensor, dims, keepdim: bool = False, dtype=None):
    if dtype is not None or dims is None or not x.is_floating_point():
        return NotImplemented
    dims = [dims] if isinstance(dims, int) else list(dims)
    n = 1
    for d in dims:
        n *= x.shape[d]
    return _mean(x, dims, keepdim) * float(n)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mu = _mean(x, dims, True)
    xc = x - mu
    y = xc * torch.rsqrt(_mean(xc * xc, dims, True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _log_softmax(x, dim, half_to_float=False):
    if half_to_float or dim % x.dim() != x.dim() - 1:
        return NotImplemented
    # exact unless a probability underflows float32 (a logit gap above ~87), where
    # log_softmax would give a large negative number and this gives -inf
    return torch.log(torch.softmax(x, dim=-1))


def _vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
    """The L2 norm over ``dim`` as sqrt of a mean × n (XNNPACK takes mul, mean and sqrt;
    left alone, ExecuTorch decomposes it into pow and sum, which run outside)."""
    if ord != 2 or dim is None or dtype is not None:
        return NotImplemented
    return torch.sqrt(_sum(x * x, dim, keepdim))


def _amax(x, dim=(), keepdim=False):
    """max over the last dim of a 3-D tensor B×N×M as a max-pool (XNNPACK has no max
    reduction, but a max-pool): ToMe's best match per token. The rows are the pool's
    channels (B×N×M×1 pooled M×1), which XNNPACK's NHWC kernels run vectorised over the
    rows; the rows as one channel pooled 1×M ran ~3× slower (11 vs 3 µs at 99×98)."""
    dims = [dim] if isinstance(dim, int) else list(dim)
    if x.dim() != 3 or [d % 3 for d in dims] != [2]:
        return NotImplemented
    b, n, m = x.shape
    out = torch.nn.functional.max_pool2d(x.reshape(b, n, m, 1), (m, 1), (m, 1))
    return out.reshape(b, n, 1) if keepdim else out.reshape(b, n)


def _select(x, dim, index):
    dim %= x.dim()
    index %= x.shape[dim]
    shape = [s for d, s in enumerate(x.shape) if d != dim]
    return x.narrow(dim, index, 1).reshape(shape)


def _unsqueeze(x, dim):
    dim %= x.dim() + 1
    shape = list(x.shape)
    shape.insert(dim, 1)
    return x.reshape(shape)


def _squeeze(x, dims):
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {d % max(x.dim(), 1) for d in dims}
    return x.reshape([s for d, s in enumerate(x.shape) if not (d in dims and s == 1)])


def decompositions() -> dict:
    a = _aten()
    return {
        a.layer_norm.default: _layer_norm,
        a.mean.dim: _mean,
        a.sum.dim_IntList: _sum,
        a.log_softmax.int: lambda x, dim, dtype=None: (
            _log_softmax(x, dim) if dtype is None else NotImplemented
        ),
        a._log_softmax.default: _log_softmax,
        a.select.int: _select,
        a.linalg_vector_norm.default: _vector_norm,
        a.amax.default: _amax,
        # XNNPACK takes unsqueeze on the last dim only, and no squeeze: both as views
        a.unsqueeze.default: _unsqueeze,
        a.squeeze.dims: _squeeze,
        a.squeeze.dim: _squeeze,
    }


def _drop_noop_expands(gm):
    """Edge pass: remove ``expand_copy`` to the shape it already has (``matmul`` on 4-D
    tensors decomposes into them; XNNPACK does not take ``expand``)."""
    exir_ops = import_executorch("exir.dialects._ops").ops
    g, changed = gm.graph, False
    for n in list(g.nodes):
        if n.op == "call_function" and n.target == exir_ops.edge.aten.expand_copy.default:
            src = n.args[0]
            if tuple(src.meta["val"].shape) == tuple(n.meta["val"].shape):
                n.replace_all_uses_with(src)
                g.erase_node(n)
                changed = True
    if changed:
        g.lint()
        gm.recompile()
    return PassResult(gm, changed)


def _fold_constants_pass():
    pass_base = import_executorch("exir.pass_base")
    fold = import_executorch("exir.passes.constant_prop_pass").constant_prop_pass

    class FoldConstants(pass_base.ExportedProgramPassBase):
        """Computations on weights alone become constants (done once, not per run)."""

        def call(self, ep):
            return pass_base.ExportedProgramPassResult(fold(ep), True)

    return FoldConstants()


# ---- lowering --------------------------------------------------------------------
@dataclass(kw_only=True)
class Lowered:
    buffer: bytes
    segments: int
    outside: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    friendly: bool = True
    quantized: torch.nn.Module | None = None  # the int8 graph in PyTorch (int8 only)
    inside: int = 0  # ops in the XNNPACK segments, reshapes not counted

    def kernels(self) -> list[str]:
        """edgeprune's own kernels the program calls, by their runtime operator names."""
        return sorted(
            f"edgeprune::{name.split('.', 1)[1]}.out"
            for name in self.outside
            if name.startswith("edgeprune.")
        )

    def xnnpack_report(self) -> dict:
        return {
            "delegate_segments": self.segments,
            "ops_in_delegates": self.inside,
            "ops_outside_delegates": self.outside,
            "xnnpack_rewrites": self.friendly,
            "edgeprune_kernels": self.kernels(),
        }


def delegate_summary(edge_program) -> tuple[int, dict[str, int], int]:
    """(number of XNNPACK delegate calls, ops left on portable kernels by name, ops
    inside the delegates other than reshapes). Every op costs a little at every run
    whatever its size (XNNPACK reshapes and sets up each one), and more on the first run
    after another program has taken the caches (benchmarks/switch_cost.py)."""
    gm = edge_program.graph_module
    segments, inside, outside = 0, 0, Counter()
    for n in gm.graph.nodes:
        if n.op == "get_attr" and str(n.target).startswith("lowered_module"):
            for m in getattr(gm, n.target).original_module.graph.nodes:
                name = getattr(m.target, "__name__", str(m.target))
                inside += m.op == "call_function" and "view_copy" not in name
        if n.op != "call_function":
            continue
        name = getattr(n.target, "__name__", str(n.target))
        if name == "executorch_call_delegate":
            segments += 1
        elif name != "getitem":
            outside[name.removeprefix("aten.").removesuffix(".default")] += 1
    return segments, dict(sorted(outside.items())), inside


@contextlib.contextmanager
def _quiet():
    """ExecuTorch and torchao log and warn at import and lowering; keep the CLI clean."""
    for name in ("executorch", "torchao", "torch._export", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def lower(
    model: torch.nn.Module,
    example: torch.Tensor,
    friendly: bool = True,
    *,
    progress=None,
    calibration: Calibration | None = None,
    kernels: bool | None = None,
) -> Lowered:
    """``model`` → an XNNPACK-delegated ExecuTorch program (in memory).

    ``kernels``: selector steps as edgeprune's own ExecuTorch kernels (``True``), as
    graphs of ATen ops (``False``), or as the caller's ``edgeprune_kernels()`` context
    says (``None``).

    ``friendly=False`` lowers the graph as ``torch.export`` gives it (for comparison).
    ``calibration``: quantize to int8 first (PT2E, on the graph as exported; the
    rewrites then run on the quantized graph, so LayerNorm stays one fp32 op for the
    quantizer). ``Lowered.quantized`` is then the quantized graph in PyTorch."""
    require_executorch()
    step = progress or (lambda _msg: None)
    prepare_trace(model)  # choices made from the weights' values, which a trace has not
    own = contextlib.nullcontext() if kernels is None else edgeprune_kernels(kernels)
    # token operations in their XNNPACK form (see methods/tokenops.py)
    with _quiet(), torch.no_grad(), fast_lowering() as fast, xnnpack_form(), own:
        partitioner = _xnnpack().XnnpackPartitioner()
        marks = {"start": time.perf_counter()}  # each step's end
        quantized = None
        if calibration is not None:
            step(f"int8 quantization (PT2E, {len(calibration.batches)} calibration batches)")
            model = quantized = quantize(model, example, calibration)
            marks["quantize"] = time.perf_counter()
        step("torch.export")
        traced = model if quantized is not None else model.eval()
        ep = _export(traced, example, friendly, partitioner)
        marks["export"] = time.perf_counter()
        why = None if fast else xnnpack_patch.unsupported()
        step("lowering to XNNPACK" + (f" (without edgeprune's speed-ups: {why})" if why else ""))
        edge = _to_edge(ep, friendly, partitioner)
        segments, outside, inside = delegate_summary(edge.exported_program())
        marks["lower"] = time.perf_counter()
        step("serializing the ExecuTorch program")
        buffer = edge.to_executorch().buffer
        marks["serialize"] = time.perf_counter()
    return Lowered(
        buffer=buffer,
        segments=segments,
        outside=outside,
        seconds=_seconds(marks),
        friendly=friendly,
        quantized=quantized,
        inside=inside,
    )


def _xnnpack():
    """XNNPACK's partitioner module."""
    return import_executorch("backends.xnnpack.partition.xnnpack_partitioner")


def _export(model: torch.nn.Module, example: torch.Tensor, friendly: bool, partitioner):
    """``torch.export`` of ``model``, with the rewrites (``friendly``) applied in the
    same ``run_decompositions`` as ExecuTorch's own pre-partition table."""
    try:
        ep = torch.export.export(model, (example,))
        if friendly:
            table = xnnpack_patch.decomposition_table(ep, decompositions(), partitioner)
            ep = ep.run_decompositions(table)
    except Exception as e:  # noqa: BLE001  (torch.export raises many kinds)
        raise EdgepruneError(
            f"torch.export failed: {' '.join(str(e).split())[:200]}", exit_code=1
        ) from e
    return ep


def _to_edge(ep, friendly: bool, partitioner):
    """The program with XNNPACK's delegate segments (and, ``friendly``, the expands
    dropped and the constants folded first)."""
    exir = import_executorch("exir")
    passes = [_drop_noop_expands, _fold_constants_pass()] if friendly else []
    # the IR verifier re-walks the whole graph after every pass (~15 % of the lowering
    # time); the program is checked where it matters, in the runtime, by the parity
    return exir.to_edge_transform_and_lower(
        ep,
        transform_passes=passes,
        partitioner=[partitioner],
        compile_config=exir.EdgeCompileConfig(_check_ir_validity=False),
    )


def _seconds(marks: dict[str, float]) -> dict[str, float]:
    """Each step's seconds (from the time marks taken at its end) and the total."""
    names, times = list(marks), list(marks.values())
    steps = zip(names[1:], times[1:], times[:-1], strict=True)
    out = {name: round(t - before, 2) for name, t, before in steps}
    out["total"] = round(times[-1] - times[0], 2)
    return out


def export_executorch(
    source: Source,
    out: Path,
    *,
    batch: int = 1,
    force: bool = False,
    n_parity_inputs: int = 16,
    progress=None,
    friendly: bool = True,
    int8: bool = False,
    images: Path | None = None,
    custom_kernels: bool = False,
) -> dict:
    """Export ``source`` to ``out`` (``.pte``) and its manifest; returns the manifest.

    ``int8``: PT2E-quantized with XNNPACK's quantizer, calibrated on ``images`` (a
    folder) or seeded random images. ``custom_kernels``: selector steps that take many
    small ops (ToMe's merge) as edgeprune's own kernels (``edgeprune/core/backends/kernels``),
    built here for the parity check; a phone's executor_runner must be built with them.
    Nothing is written unless the program matches PyTorch fp32 in the ExecuTorch
    runtime (within the precision's tolerance)."""

    out = Path(out)
    calibration = _calibration(source, batch, int8, images)
    require_executorch()
    mpath = prepare_outputs(out, ExecuTorchTarget.accepted_suffixes(), force)
    step = progress or (lambda _msg: None)
    if custom_kernels:  # no compiler or no headers: one line before the export's work
        step("edgeprune's ExecuTorch kernels (built once per machine)")
        build()
    img = source.arch.img_size
    # kernels not asked for: as the caller's context says (profile and validate-profile
    # set it from the device descriptor, so they lower as the profile did)
    low = lower(
        source.model(),
        torch.zeros(batch, 3, img, img),
        friendly,
        progress=step,
        calibration=calibration,
        kernels=True if custom_kernels else None,
    )
    step(f"parity check ({n_parity_inputs} inputs, ExecuTorch runtime)")
    checks = _parity(source, low, batch, n_parity_inputs)
    manifest = _manifest(source, out, batch, low, checks, calibration)
    return write_file_artifact(out, low.buffer, manifest, mpath)


def _calibration(source: Source, batch: int, int8: bool, images: Path | None):
    """The calibration for ``--int8`` (None without it), the options checked first. The
    images are read before anything else: a bad folder is one line, executorch or not."""
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    if images is not None and not int8:
        raise EdgepruneError("--images (calibration images) needs --int8")
    return calibration_for(images, batch, source.arch.img_size) if int8 else None


def _manifest(
    source: Source, out: Path, batch: int, low: Lowered, checks: dict, calibration
) -> dict:
    manifest = base_manifest(source, "executorch", out, batch, "executorch")
    manifest.update(
        {
            "precision": "fp32" if calibration is None else "int8",
            "backend": "XnnpackBackend",
            **io_spec(source, batch),
            "xnnpack": low.xnnpack_report(),
            "fallbacks": fallbacks.executorch(low.buffer),
            "export_seconds": low.seconds,
            **checks,
        }
    )
    ops = low.kernels()
    if ops:
        manifest["custom_kernels"] = {
            "ops": ops,
            # as the repository spells them: edgeprune/core/backends/kernels/<name>.cpp
            "sources": [source_name(op) for op in ops],
            "runtime": "executor_runner must be built with these sources (README)",
        }
    if calibration is not None:
        manifest["quantization"] = {**QUANTIZER, "calibration": calibration.info}
    return manifest


def _parity(source: Source, low: Lowered, batch: int, n_inputs: int) -> dict:
    """The program in the ExecuTorch runtime against PyTorch fp32 (enforced, with the
    precision's tolerance); for int8 also against the quantized graph in PyTorch
    (recorded: how far the XNNPACK int8 kernels are from PT2E's reference ops)."""

    precision = "fp32" if low.quantized is None else "int8"
    runner = get_runner("executorch")  # this process's ExecuTorch runtime
    runner.load(low.buffer)
    label = "executorch (xnnpack)"
    tol = TOLERANCE[precision]
    parity = check_parity(
        f"the {precision} ExecuTorch program",
        source,
        runner,
        batch=batch,
        n_inputs=n_inputs,
        tol=tol,
        hint="nothing was written",
        label=label,
    )
    checks = {"parity": parity.to_dict()}
    if low.quantized is not None:
        img = source.arch.img_size
        p = compare(
            low.quantized, runner, batch=batch, img_size=img, n_inputs=n_inputs, tol=tol,
            runtime=label,
        )  # fmt: skip
        checks["parity_vs_quantized_pytorch"] = {
            **p.to_dict(),
            "against": "pytorch int8 (PT2E reference q/dq graph)",
            "enforced": False,
        }
    return checks


@register
class ExecuTorchTarget(Target):
    """ExecuTorch: an XNNPACK-delegated ``.pte`` (fp32, or int8 with ``--int8``),
    lowered from ``torch.export``."""

    name = "executorch"
    suffix = SUFFIX
    precisions = ("fp32",)
    tolerances = TOLERANCE
    options = (
        TargetOption("int8", "--int8", default=False, parse=bool),
        TargetOption("images", "--images", default=None, parse=Path),
        TargetOption("custom_kernels", "--custom-kernels", default=False, parse=bool),
    )
    checkable = False  # lowered from torch, not from the ONNX graph that `check` reads

    def precision_hint(self, precision: str) -> str:
        if precision == "int8":
            return "use --int8 for PT2E int8 quantization (XNNPACK's quantizer)"
        return super().precision_hint(precision)

    def export(self, source: Source, req: ExportRequest, out: Path, progress=None) -> ExportResult:
        man = export_executorch(
            source,
            out,
            batch=req.batch,
            **req.common(progress),
            int8=req.option("int8"),
            images=req.option("images"),
            custom_kernels=req.option("custom_kernels"),
        )
        return self.result(out, man)

    def module_artifact(self, module, input_shape: tuple[int, ...]) -> bytes:
        return lower(module, torch.zeros(input_shape)).buffer
