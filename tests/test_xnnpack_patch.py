"""The patches of ExecuTorch's (and torch.export's) internals, export/executorch/
xnnpack_patch.py: this file fails when the library under them changes; they are in
place only inside ``patched()``; on another executorch they are not applied, and the
lowering says so. (That they leave the program the same, byte for byte, is
tests/test_executorch.py's ``test_fast_lowering_gives_the_same_program_byte_for_byte``.)
Skipped, with the reason, only where the executorch extra is not installed."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from importlib import metadata

import numpy as np
import pytest
import torch

et = pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')

# sha256 (first 16 hex digits) of the source of every function and class the patches,
# and the checks of export/executorch/lowering.py, were written from: executorch 1.5.1,
# torch 2.14.1 (a dict: its sorted items). When one changes, re-read it, check that the
# patch or the check still holds, and only then update the hash here (and WRITTEN_FOR).
PINNED = {
    "torch.fx.traceback.NodeSource.__init__": "99395e7f40a4a049",
    "torch.export.exported_program.ExportedProgram.run_decompositions": "c74cbc17d3874021",
    "executorch.backends.xnnpack._passes.XNNPACKPassManager": "7fcec85f18a3016d",
    "executorch.backends.xnnpack.xnnpack_preprocess.XnnpackBackend.preprocess": "62f7dc915f1ef40c",
    "executorch.exir.program._program._gen_edge_manager_for_partitioners": "14a2b38bd338a215",
    "executorch.exir.program._program._generate_edge_program": "231b0ef63ff582cb",
    "executorch.exir.program._program._remove_invalid_ops_for_not_decompose": "3e17892fc8dbf7d8",
    "executorch.exir.backend.partitioner.Partitioner.transform_for_pre_decomposition": (
        "b67ff9fbd18d67a1"
    ),
    "executorch.exir.tracer._default_decomposition_table": "e59f18ff03bf06dc",
    "executorch.exir.passes.replace_aten_with_edge_pass.OpReplacePass": "a31a8cccd25a9fc6",
    "executorch.exir.passes.dim_order_ops_registry.DimOrderOpsMap": "9c6e97f0fab866c5",
    "executorch.exir.passes.normalize_transpose_pass.NormalizeTransposePass": "9eda784569a1751e",
    "executorch.exir.passes.replace_broken_ops_with_function_ops_pass."
    "ReplaceBrokenOpsWithFunctionalOpsPass": "cd77e91fb55d9f48",
    "executorch.exir.passes.sym_to_tensor_pass.SymToTensorPass": "4b4f5a945e263c93",
    "executorch.exir.passes.remove_mixed_type_operators.RemoveMixedTypeOperators": (
        "e6f1507618597d50"
    ),
    "executorch.exir.passes.legalize_portable_dim_order_pass.LegalizePortableDimOrderPass": (
        "8cabc183c96e3a86"
    ),
    "executorch.exir.passes.memory_format_ops_pass.MemoryFormatOpsPass": "38438c41e1281c84",
    "executorch.backends.xnnpack._passes.ConvertToUpsampleBilinear2d": "711c5e3e00df8749",
    "executorch.backends.xnnpack._passes.ConvertToSDPAPass": "d23a04af509e40ea",
    "executorch.backends.xnnpack._passes.ConvertToLinearPass": "8b1c34b3756ac59e",
    "executorch.backends.xnnpack._passes.ConstPropPass": "e157eae245386b5c",
    "executorch.backends.xnnpack._passes.FuseBatchNormPass": "d20f5c6a6f37a9b1",
    "executorch.backends.xnnpack._passes.DecomposeBatchNorm": "aa0abaea1b71743d",
    "executorch.backends.xnnpack._passes.Conv1dUnsqueezePass": "6e235a5ac754089d",
    "executorch.backends.xnnpack._passes.PReLUReshapePass": "063a4ac4abd8944f",
    "executorch.backends.xnnpack._passes.RemoveGetItemPass": "c58434b5a108e03d",
    "executorch.backends.xnnpack._passes.DecomposeConcatenate": "03f83199646f7226",
    "executorch.backends.xnnpack._passes.DimOrderOpsRevertPass": "04efcf31f4ef6c1d",
    "executorch.backends.xnnpack._passes.RemoveRedundantCopyPass": "61192c6844c1c4e7",
    "executorch.backends.xnnpack._passes.FuseActivationPass": "751d5edc43de94d3",
    "executorch.backends.xnnpack._passes.PropagateCustomMetaPass": "2605f4cbed81e58a",
    "executorch.backends.xnnpack._passes.InsertPadQDQPass": "3b29387c0a22b31d",
}

# XNNPACK's default pass list in executorch 1.5 (what the backend runs on every segment)
XNNPACK_PASSES = [
    "XNNPACKRemoveCloneOpsTransform",
    "DimOrderOpsRevertPass",
    "ConvertToUpsampleBilinear2d",
    "ConvertToLinearPass",
    "PropagateCustomMetaPass",
    "ConvertToSDPAPass",
    "ConstPropPass",
    "FuseBatchNormPass",
    "DecomposeBatchNorm",
    "FuseActivationPass",
    "DecomposeConcatenate",
    "RemoveGetItemPass",
    "InsertPadQDQPass",
    "Conv1dUnsqueezePass",
    "PReLUReshapePass",
    "ChannelsLastTaggedReshapePass",
    "RemoveRedundantCopyPass",
]


def _resolve(dotted: str):
    """The object a dotted name reaches: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _fingerprint(obj) -> str:
    if inspect.isclass(obj) or inspect.isroutine(obj):
        text = inspect.getsource(obj)
    else:
        text = "\n".join(sorted(f"{k} -> {v}" for k, v in obj.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_library_under_the_patches_is_the_one_they_were_written_for():
    from edgeprune.export.executorch.xnnpack_patch import RELIES_ON

    assert sorted(RELIES_ON) == sorted(PINNED)  # every reliance is pinned, and only those
    changed = [name for name in RELIES_ON if _fingerprint(_resolve(name)) != PINNED[name]]
    assert not changed, f"changed under xnnpack_patch.py: {changed}"


def test_the_backend_runs_the_pass_list_the_checks_were_written_for():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir.backend.partitioner import Partitioner

    from edgeprune.export.executorch.lowering import APPLIES

    names = [p.__name__ for p in XNNPACKPassManager(None).passes]
    assert names == XNNPACK_PASSES
    assert set(APPLIES) < set(names)  # each check belongs to a pass that runs
    # patch 2 replaces the name the backend builds its pass manager by
    assert "XNNPACKPassManager(ep, passes=passes)" in inspect.getsource(XnnpackBackend.preprocess)
    # patch 3 recognises the program our decompositions made: XNNPACK's partitioner
    # keeps the pre-decomposition hook (executorch 1.5) that hands it back as it is
    assert XnnpackPartitioner.transform_for_pre_decomposition is (
        Partitioner.transform_for_pre_decomposition
    )


def _targets() -> dict[str, object]:
    """What the patches replace, as it is now."""
    from executorch.backends.xnnpack import xnnpack_preprocess
    from executorch.exir.program import _program
    from torch.export import ExportedProgram
    from torch.fx.traceback import NodeSource

    from edgeprune.export.executorch.xnnpack_patch import edge_passes

    now = {
        "NodeSource.__init__": NodeSource.__init__,
        "ExportedProgram.run_decompositions": ExportedProgram.run_decompositions,
        "xnnpack_preprocess.XNNPACKPassManager": xnnpack_preprocess.XNNPACKPassManager,
        "_program.OpReplacePass": _program.OpReplacePass,
    }
    for name, cls in edge_passes().items():
        now[f"{name}.__call__"] = cls.__call__
    return now


def test_patches_are_in_place_only_inside_the_context(monkeypatch):
    from edgeprune.export.executorch.xnnpack_patch import patched

    monkeypatch.delenv("EDGEPRUNE_XNNPACK_ALL_PASSES", raising=False)
    before = _targets()
    assert len(before) == 10
    with patched(lambda _pass, _graph: True) as on:
        assert on
        inside = _targets()
        assert [k for k in before if inside[k] is before[k]] == []
    after = _targets()
    assert [k for k in before if after[k] is not before[k]] == []
    with pytest.raises(KeyError), patched(lambda _pass, _graph: True):
        raise KeyError("a lowering that fails")
    after = _targets()
    assert [k for k in before if after[k] is not before[k]] == []


def test_switched_off_by_the_environment(monkeypatch):
    from edgeprune.export.executorch.xnnpack_patch import decomposition_table, patched

    monkeypatch.setenv("EDGEPRUNE_XNNPACK_ALL_PASSES", "1")
    before = _targets()
    with patched(lambda _pass, _graph: True) as on:
        assert not on
        assert all(v is before[k] for k, v in _targets().items())
    ours = {torch.ops.aten.mean.dim: None}
    assert decomposition_table(None, ours, None) is ours


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.nn.functional.layer_norm(self.fc(x), (4,))


def test_on_another_executorch_nothing_is_patched_and_lower_says_so(monkeypatch):
    from edgeprune.export.executorch import xnnpack_patch
    from edgeprune.export.executorch.target import lower
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    monkeypatch.delenv("EDGEPRUNE_XNNPACK_ALL_PASSES", raising=False)
    assert xnnpack_patch.unsupported() is None  # the versions installed here
    real = metadata.version
    monkeypatch.setattr(
        xnnpack_patch, "_version", lambda p: "1.6.0" if p == "executorch" else real(p)
    )
    why = xnnpack_patch.unsupported()
    assert why == "executorch 1.6.0; they were written for executorch 1.5.x"
    before = _targets()
    with xnnpack_patch.patched(lambda _pass, _graph: True) as on:
        assert not on
        assert all(v is before[k] for k, v in _targets().items())
    steps: list[str] = []
    model, x = _Small().eval(), torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    low = lower(model, torch.zeros(2, 8), progress=steps.append)
    assert f"lowering to XNNPACK (without edgeprune's speed-ups: {why})" in steps
    r = ExecuTorchRunner(threads=1)
    r.load(low.buffer)
    with torch.no_grad():
        assert np.abs(r.run(x.numpy())[0] - model(x).numpy()).max() < 1e-5
