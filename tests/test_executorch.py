"""ExecuTorch target and runtime, for real: a tiny DeiT-shaped model (embed 48, 3 heads,
depth 3, 64×64 images) lowered to an XNNPACK-delegated .pte, checked in the ExecuTorch
runtime against PyTorch, then loaded, run and timed by the runner. Skipped, with the
reason, only where the executorch extra is not installed."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.core.methods import get_method
from edgeprune.core.source import Source

et = pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')

TINY = Arch("custom", embed_dim=48, num_heads=3, depth=3, img_size=64, num_classes=10)
TINY2 = Arch("custom", embed_dim=48, num_heads=3, depth=2, img_size=64, num_classes=10)


def tiny_source(method: str, locs=(1, 2), keep=(0.5, 0.25), arch: Arch = TINY) -> Source:
    m = get_method(method)
    cfg = m.config_for(2, arch) if method == "tome" else m.default_config(arch)
    if method not in ("dense", "tome"):
        cfg = m.with_overrides(cfg, arch, keep=keep, locs=locs)
    return Source(f"tiny:{method}", "builtin", arch, m, cfg, m.token_plan(arch, cfg))


@pytest.fixture(scope="module")
def spvit_pte(tmp_path_factory):
    from edgeprune.export.executorch.target import export_executorch

    out = tmp_path_factory.mktemp("et") / "m.pte"
    man = export_executorch(tiny_source("spvit"), out, n_parity_inputs=2)
    return out, man


def test_export_writes_pte_and_manifest_with_parity_and_segments(spvit_pte):
    from edgeprune.export.manifest import manifest_path

    out, man = spvit_pte
    assert out.read_bytes()[4:8] == b"ET12"
    on_disk = json.loads(manifest_path(out).read_text())
    assert on_disk == man
    assert man["target"] == "executorch" and man["backend"] == "XnnpackBackend"
    p = man["parity"]
    assert p["status"] == "passed" and p["runtime"] == "executorch (xnnpack)"
    assert p["max_abs_diff"] <= 1e-4 and p["top1_agreement"] == 1.0 and p["inputs"] == 2
    x = man["xnnpack"]
    # selection in the XNNPACK form (methods/tokenops.py): TopK, the row copies
    # (index_select, not an element-wise gather) and the dropped-token mask outside
    outside = x["ops_outside_delegates"]
    assert outside["topk"] == 2 and outside["index_select"] == 2 and "gather" not in outside, x
    assert set(outside) <= SELECTION_OPS and x["delegate_segments"] == 3, x
    assert x["ops_in_delegates"] > 10 * TINY.depth, x
    assert "native_layer_norm" not in x["ops_outside_delegates"]
    assert man["versions"]["executorch"].startswith("1.")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_rewrites_remove_segments_and_keep_the_function():
    """Without the rewrites LayerNorm, select and expand cut the graph into many
    segments; with them one dense model is one delegate, same outputs."""
    from edgeprune.export.executorch.target import lower
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    src = tiny_source("dense", arch=TINY2)
    model, x = src.model(), torch.randn(1, 3, 64, 64)
    raw = lower(model, torch.zeros(1, 3, 64, 64), friendly=False)
    good = lower(model, torch.zeros(1, 3, 64, 64))
    assert good.segments == 1 and good.outside == {}
    assert raw.segments > 3 * TINY2.depth and "native_layer_norm" in raw.outside
    # every op of the rewritten graph in XNNPACK: LayerNorm as its steps, and more
    assert good.inside > raw.inside > 0
    r = ExecuTorchRunner(threads=1)
    with torch.no_grad():
        ref = model(x).numpy()
    for low in (raw, good):
        r.load(low.buffer)
        assert np.abs(r.run(x.numpy())[0] - ref).max() < 1e-4


@pytest.mark.parametrize("method", ["tome", "avit", "spvit"])
def test_fast_lowering_gives_the_same_program_byte_for_byte(monkeypatch, method):
    """The speed-ups of export/executorch/lowering.py (shorter provenance, one
    decomposition pass, XNNPACK and ExecuTorch passes that cannot apply skipped) change
    nothing in the program, debug handles included; and they are undone after each
    lowering. The methods with op kinds of their own (ToMe: cat, pad, slices,
    max-pool; A-ViT: clamp and ceil; SPViT: sigmoid and the package token, with the
    top-k selection and weighted rest that DynamicViT and EViT also use)."""
    from executorch.exir.passes.sym_to_tensor_pass import SymToTensorPass
    from torch.fx.traceback import NodeSource

    from edgeprune.export.executorch import xnnpack_patch
    from edgeprune.export.executorch.lowering import APPLIES
    from edgeprune.export.executorch.target import lower

    monkeypatch.delenv("EDGEPRUNE_XNNPACK_ALL_PASSES", raising=False)
    assert xnnpack_patch.active(), xnnpack_patch.unsupported()  # else nothing is compared
    src = tiny_source(method, locs=(1,), keep=(0.5,), arch=TINY2)
    model, x = src.model(), torch.zeros(1, 3, 64, 64)
    init, call = NodeSource.__init__, SymToTensorPass.__call__
    fast = lower(model, x)
    assert NodeSource.__init__ is init and SymToTensorPass.__call__ is call
    monkeypatch.setenv("EDGEPRUNE_XNNPACK_ALL_PASSES", "1")
    every = lower(model, x)
    assert fast.segments == every.segments and fast.outside == every.outside
    assert fast.buffer == every.buffer
    assert "ConvertToUpsampleBilinear2d" in APPLIES


def test_spvit_tied_heads_lower_token_major_and_untied_heads_per_head():
    """A built-in SPViT model has tied heads, as the released checkpoints: the lowering
    reads that from the weights before torch.export (which has no values) and traces
    the token-major predictor, fewer XNNPACK ops than the per-head form that untied
    heads take; both programs give PyTorch's logits in the ExecuTorch runtime."""
    from edgeprune.export.executorch.target import lower
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    lowered = {}
    for tied in (True, False):
        model = tiny_source("spvit", locs=(1,), keep=(0.5,), arch=TINY2).model()
        assert model.score_predictor[0].heads_tied()
        if not tied:
            with torch.no_grad():
                model.score_predictor[0].in_conv[1][1].weight.mul_(1.01)
        low = lowered[tied] = lower(model, torch.zeros(1, 3, 64, 64))
        r = ExecuTorchRunner(threads=1)
        r.load(low.buffer)
        with torch.no_grad():
            want = model(x)
        assert np.abs(r.run(x.numpy())[0] - want.numpy()).max() <= 1e-4
    assert lowered[True].inside < lowered[False].inside, (
        lowered[True].inside,
        lowered[False].inside,
    )


# what the XNNPACK form leaves to portable kernels: TopK, the row copies, the
# dropped-token mask, ToMe's sorted complement and A-ViT's kept halting values
SELECTION_OPS = {"topk", "index_select", "full_like", "scatter.value", "view_copy", "gather"}
SELECTION_OPS |= {"slice_copy.Tensor", "cat", "mul.Tensor", "add.Tensor"}  # index arithmetic


@pytest.mark.parametrize("method", ["dynamicvit", "evit", "spvit", "avit", "tome"])
def test_every_method_selects_with_topk_and_row_copies_around_xnnpack(method):
    """The XNNPACK form: every method's blocks and scoring run in XNNPACK; only TopK,
    row copies (``index_select``, never ``torch.gather``'s per-element copy of whole
    rows) and small index ops run on portable kernels; the logits equal PyTorch's in
    the ExecuTorch runtime (batch 2: the row copies index the flattened rows)."""
    from edgeprune.export.executorch.target import lower
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    src = tiny_source(method, locs=(1,), keep=(0.5,), arch=TINY2)
    model = src.model()
    low = lower(model, torch.zeros(2, 3, 64, 64))
    assert set(low.outside) <= SELECTION_OPS, low.outside
    assert low.outside["topk"] >= 1 and low.outside["index_select"] >= 1, low.outside
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    r = ExecuTorchRunner(threads=1)
    r.load(low.buffer)
    with torch.no_grad():
        assert np.abs(r.run(x.numpy())[0] - model(x).numpy()).max() < 1e-4


class _TopRows(torch.nn.Module):
    """Keep the k best of 196 rows by a score, and the rest in order (ToMe's pieces);
    the same by exact ranks (A-ViT's ``exact_ties``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from edgeprune.core.methods.tokenops import select_top

        key = x[..., 0] - x[..., 1]
        sel, exact = select_top(key, 150), select_top(key, 150, exact_ties=True)
        return torch.cat([sel.rows(x), sel.rest_in_order(x), exact.rows(x)], dim=1)


def test_selection_is_exact_at_full_token_counts_ties_included():
    """At DeiT's 196 patch tokens, with many tied keys, the program keeps the same rows
    in the same order as PyTorch, bit for bit: ExecuTorch's TopK breaks ties as
    PyTorch's, and exact ranks (counts summed by a MatMul, where a mean × N lands off
    the integer for some ranks: DeiT-S SPViT's parity failed so once) come out as
    integers."""
    from edgeprune.export.executorch.target import lower
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    x = torch.randn(2, 196, 8, generator=torch.Generator().manual_seed(4))
    x[..., 0] = (x[..., 0] * 2).round() / 2  # keys on a coarse grid: many ties
    x[..., 1] = 0.0
    low = lower(_TopRows(), x)
    assert low.outside["topk"] >= 3 and low.outside["index_select"] == 3, low.outside
    r = ExecuTorchRunner(threads=1)
    r.load(low.buffer)
    with torch.no_grad():
        want = _TopRows()(x).numpy()
    assert np.array_equal(r.run(x.numpy())[0], want)


def test_fast_lowering_keeps_the_passes_a_graph_needs():
    """A pass is skipped only when the graph has none of the ops it rewrites."""
    from edgeprune.export.executorch.lowering import APPLIES

    class BN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x)

    bn = torch.export.export(BN().eval(), (torch.zeros(1, 3, 4, 4),)).run_decompositions()
    cat6 = torch.export.export(_Cat6(), (torch.zeros(1, 2),)).run_decompositions()
    q = torch.zeros(1, 2, 4, 8)
    sdpa = torch.export.export(_SDPA(), (q, q, q, torch.zeros(4, 4))).run_decompositions()
    plain = torch.export.export(_MaskedSoftmax(), (torch.zeros(2, 2),)).run_decompositions()
    assert APPLIES["FuseBatchNormPass"](bn.graph) and APPLIES["DecomposeBatchNorm"](bn.graph)
    assert not APPLIES["FuseBatchNormPass"](cat6.graph)
    assert APPLIES["DecomposeConcatenate"](cat6.graph)
    assert not APPLIES["DecomposeConcatenate"](bn.graph)
    # XNNPACK's SDPA templates need the masked-row guard that SDPA decomposes into
    assert APPLIES["ConvertToSDPAPass"](sdpa.graph)
    assert not APPLIES["ConvertToSDPAPass"](plain.graph)
    assert not APPLIES["ConvertToSDPAPass"](bn.graph)


def test_fast_lowering_skips_edge_passes_only_when_idle():
    """ExecuTorch's own edge passes are skipped only on graphs with none of the ops
    they rewrite: a transpose ``t``, a view, a mixed-dtype sum, a constant to fold, an
    ``mm`` of a transposed weight."""
    from executorch.exir.passes.normalize_transpose_pass import NormalizeTransposePass
    from executorch.exir.passes.remove_mixed_type_operators import RemoveMixedTypeOperators
    from executorch.exir.passes.replace_broken_ops_with_function_ops_pass import (
        ReplaceBrokenOpsWithFunctionalOpsPass,
    )

    from edgeprune.export.executorch.lowering import APPLIES, _edge_pass_checks

    checks = _edge_pass_checks()

    def graph(fn, *args):
        class M(torch.nn.Module):
            def forward(self, *a):
                return fn(*a)

        return torch.export.export(M(), args).graph

    x, w = torch.zeros(3, 4), torch.zeros(5, 4)
    t = graph(lambda a, b: a @ b.t(), x, w)
    plain = graph(lambda a: a * a + a, x)
    mixed = graph(lambda a, i: a + i, x, torch.zeros(3, 4, dtype=torch.int64))
    assert checks[NormalizeTransposePass](t) and not checks[NormalizeTransposePass](plain)
    assert checks[ReplaceBrokenOpsWithFunctionalOpsPass](t)  # t is a view
    assert not checks[ReplaceBrokenOpsWithFunctionalOpsPass](plain)
    assert checks[RemoveMixedTypeOperators](mixed)
    assert not checks[RemoveMixedTypeOperators](plain)
    # the check against XNNPACK's ConvertToLinearPass run for real: an addmm traced in a
    # Linear is rewritten; an mm traced in a Linear subclass is not (the pass matches the
    # class by its exact dotted name), nor one traced outside any Linear
    decomposed = torch.export.export(torch.nn.Linear(4, 5), (x,)).run_decompositions()
    cases = [(decomposed, True)] + [
        (torch.export.export(m, (x,)), False) for m in (_LinearMM(4, 5), _Square(), _Elementwise())
    ]
    for ep, rewrites in cases:
        edge = _edge(ep)
        assert APPLIES["ConvertToLinearPass"](edge.graph) == _linear_pass_rewrites(edge) == rewrites
    assert not APPLIES["ConstPropPass"](plain)
    assert APPLIES["ConstPropPass"](graph(lambda a: a + torch.ones(4) * 2, x))


def _edge(ep):
    from executorch.exir import EdgeCompileConfig, to_edge

    return to_edge(
        ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)
    ).exported_program()


class _Elementwise(torch.nn.Module):
    def forward(self, x):
        return x * x + 1.0


class _Square(torch.nn.Module):
    """An mm traced outside any Linear: ConvertToLinearPass leaves it alone."""

    def forward(self, x):
        return x @ x.transpose(0, 1).contiguous() * 2.0


class _LinearMM(torch.nn.Linear):
    """An mm traced inside a Linear subclass, of a weight copied (not a plain transpose):
    ``get_source_partitions`` looks for the class ``torch.nn.modules.linear.Linear`` by
    name in the traced module stack, and this one has another name."""

    def forward(self, x):
        return torch.mm(x, self.weight.transpose(0, 1).contiguous()) + self.bias


def _linear_pass_rewrites(edge) -> bool:
    """Whether XNNPACK's ConvertToLinearPass, run for real, adds a ``linear`` node."""
    import copy

    from executorch.backends.xnnpack._passes.convert_to_linear import ConvertToLinearPass

    def linears(gm) -> int:
        return sum("linear" in str(n.target) for n in gm.graph.nodes)

    gm = copy.deepcopy(edge.graph_module)
    return linears(ConvertToLinearPass()(gm).graph_module) > linears(edge.graph_module)


class _SDPA(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class _Cat6(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x * i for i in range(6)], dim=1)


class _MaskedSoftmax(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x @ x + x, dim=-1)


def test_runner_loads_runs_and_times_with_threads(spvit_pte):
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner, thread_count
    from edgeprune.runtimes.timing import TimingPolicy

    out, _ = spvit_pte
    r = ExecuTorchRunner(threads=2)
    r.load(out)
    assert r.input_shapes() == {"input": (1, 3, 64, 64)}
    assert thread_count() == 2
    (y,) = r.run(np.zeros((1, 3, 64, 64), np.float32))
    assert y.shape == (1, 10) and np.isfinite(y).all()
    t = r.time(TimingPolicy.fixed(5, warmup=1))
    assert t.runs == 5 and t.threads == 2 and t.runtime == "executorch"
    assert 0 < t.min_ms <= t.median_ms <= t.max_ms
    r1 = ExecuTorchRunner(threads=1)
    r1.load(out.read_bytes())
    r1.run(np.zeros((1, 3, 64, 64), np.float32))
    assert thread_count() == 1


def test_runner_refuses_what_is_not_a_program(tmp_path):
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    bad = tmp_path / "m.pte"
    bad.write_bytes(b"not a program at all")
    r = ExecuTorchRunner()
    with pytest.raises(EdgepruneError, match="not an ExecuTorch program"):
        r.load(bad)
    with pytest.raises(EdgepruneError, match="does not exist"):
        r.load(tmp_path / "missing.pte")


def test_without_executorch_one_line_what_to_install(monkeypatch, tmp_path):
    from edgeprune.export.executorch.target import export_executorch
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(MissingRuntimeError) as e:
        export_executorch(tiny_source("dense"), tmp_path / "m.pte")
    assert e.value.exit_code == 2 and "edgeprune[executorch]" in e.value.one_line()
    with pytest.raises(MissingRuntimeError, match="executorch not installed"):
        ExecuTorchRunner()
    assert list(tmp_path.iterdir()) == []


def test_executor_runner_log_parsing():
    from edgeprune.runtimes.executorch.runner import parse_iterations, parse_total

    log = (
        "I 00:00:00.101 executorch:executor_runner.cpp:511] Iteration 1 of 3: 12.5 ms\n"
        "I 00:00:00.113 executorch:executor_runner.cpp:511] Iteration 2 of 3: 10.25 ms\n"
        "I 00:00:00.124 executorch:executor_runner.cpp:511] Iteration 3 of 3: 10.0 ms\n"
        "I 00:00:00.124 executorch:executor_runner.cpp:520] Model executed successfully "
        "3 time(s) in 32.75 ms.\n"
    )
    assert parse_iterations(log) == [12.5, 10.25, 10.0]
    assert parse_total(log) == (3, 32.75)
    assert parse_iterations("nothing") == [] and parse_total("nothing") is None


def test_cli_target_without_the_extra_is_one_line(cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch", None)
    code, _, err = cli("export", "deit_tiny", "-t", "executorch", "-o", tmp_path / "m.pte")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert 'pip install "edgeprune[executorch]"' in errors[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--precision", "fp16"], "--precision fp16 is not supported"),
        (["--dynamic-batch", "1,1,2"], "--dynamic-batch does not apply"),
        (["-o", "m.onnx"], "should end in .pte"),
    ],
)
def test_cli_bad_options_for_executorch(cli, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    out = [] if "-o" in args else ["-o", "m.pte"]
    code, _, err = cli("export", "deit_tiny", "-t", "executorch", *out, *args)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and needle in errors[0]
    assert list(tmp_path.iterdir()) == []


def test_registered_as_a_target():
    from edgeprune.export.targets import get_target

    t = get_target("executorch")
    assert t.suffix == ".pte" and t.precisions == ("fp32",) and not t.checkable
