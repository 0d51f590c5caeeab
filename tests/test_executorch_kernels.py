"""edgeprune's own ExecuTorch kernels (``runtimes/kernels``), for real: compiled here with
the machine's g++ against the executorch wheel, loaded into the ExecuTorch runtime, and
run inside lowered programs against PyTorch. ToMe's merge (``edgeprune::tome_merge``)
replaces ~28 small ops a block with one call (``export --target executorch
--custom-kernels``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError

pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')

TINY = Arch("custom", embed_dim=48, num_heads=3, depth=3, img_size=64, num_classes=10)
MICRO = Arch("et_kmicro", embed_dim=48, num_heads=3, depth=4, img_size=64, num_classes=10)


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """One build for the module, in a folder of its own (not the user's cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPRUNE_CACHE", str(tmp_path_factory.mktemp("kcache")))
    yield
    mp.undo()


def tome_source(arch: Arch = TINY, r: int = 2):
    from edgeprune.core.methods import get_method
    from edgeprune.core.source import Source

    m = get_method("tome")
    cfg = m.config_for(r, arch)
    return Source("tiny:tome", "builtin", arch, m, cfg, m.token_plan(arch, cfg))


def _run(low, x: torch.Tensor) -> list[np.ndarray]:
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    r = ExecuTorchRunner(threads=1)
    r.load(low.buffer)
    return r.run(x.numpy())


def test_tome_with_the_kernel_matches_pytorch_with_fewer_ops():
    """Every merge is one kernel call outside the delegate, nothing else runs outside,
    and the logits equal PyTorch's (batch 2) — and the graph form's ~28 ops a block are
    gone."""
    from edgeprune.export.executorch.target import lower

    model = tome_source().model()
    example = torch.zeros(2, 3, 64, 64)
    graph = lower(model, example)
    fused = lower(model, example, kernels=True)
    assert fused.outside == {"edgeprune.tome_merge": TINY.depth}, fused.outside
    assert fused.kernels() == ["edgeprune::tome_merge.out"] and graph.kernels() == []
    assert fused.inside < graph.inside - 10 * TINY.depth, (fused.inside, graph.inside)
    assert sum(graph.outside.values()) > 5 * TINY.depth
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(_run(fused, x)[0] - want).max() < 1e-4


class _Merge(torch.nn.Module):
    def __init__(self, r: int):
        super().__init__()
        self.r = r

    def forward(self, x, size, scores):
        out, s = torch.ops.edgeprune.tome_merge(x, size, scores, self.r)
        return out + 0.0, s + 0.0


@pytest.mark.parametrize("n, r", [(17, 4), (16, 7), (9, 0)])
def test_kernel_equals_the_reference_sizes_and_first_maximum(n, r):
    """The kernel against ToMe's merge in PyTorch (``merge_scored``, the index form) on
    sizes other than 1, odd and even token counts, r = 0, and rows whose best B match
    is tied (the first maximum wins, as ArgMax)."""
    from executorch.exir import to_edge_transform_and_lower

    from edgeprune.core.backends import executorch_kernels
    from edgeprune.core.methods.tome import merge_scored
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    g = torch.Generator().manual_seed(n)
    x = torch.randn(2, n, 8, generator=g)
    size = torch.randint(1, 5, (2, n, 1), generator=g).float()
    na, nb = (n + 1) // 2, n // 2
    scores = torch.randn(2, na, nb, generator=g)
    scores[:, 1:3, 0] = scores[:, 1:3, 1] = 5.0  # tied best columns: the first one wins
    scores[:, 1, 0] = scores[:, 1, 1] = 6.0  # and distinct best values across rows
    ep = torch.export.export(_Merge(r), (x, size, scores))
    buf = to_edge_transform_and_lower(ep).to_executorch().buffer
    assert executorch_kernels.needs_kernels(buf)
    runner = ExecuTorchRunner(threads=1)
    runner.load(buf)
    got = runner.method.execute([x, size, scores])
    want = merge_scored(x, size, scores, r)
    assert got[0].shape == (2, n - r, 8) and got[1].shape == (2, n - r, 1)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.equal(got[1], want[1])


def test_kernel_breaks_ties_among_the_best_scores_in_token_order():
    """A1 and A2 share the highest best score and r = 1: A1 (the earlier token) merges,
    A2 stays, copied exactly (PyTorch's TopK leaves the order of ties unspecified, so
    this is checked against the documented rule, not against ``merge_scored``)."""
    from executorch.exir import to_edge_transform_and_lower

    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    n = 7  # A tokens: rows 0, 2, 4, 6; B tokens: rows 1, 3, 5
    x = torch.randn(1, n, 4, generator=torch.Generator().manual_seed(1))
    size = torch.ones(1, n, 1)
    scores = torch.zeros(1, 4, 3)
    scores[0, 1, 2] = scores[0, 2, 0] = 0.9  # A1 -> B2 and A2 -> B0, tied
    ep = torch.export.export(_Merge(1), (x, size, scores))
    runner = ExecuTorchRunner(threads=1)
    runner.load(to_edge_transform_and_lower(ep).to_executorch().buffer)
    out, s = runner.method.execute([x, size, scores])
    # kept A rows 0, 4, 6 (A0, A2, A3), then B rows 1, 3, 5 with A1 (row 2) merged into B2
    assert torch.equal(out[0, :3], x[0, [0, 4, 6]]) and torch.equal(out[0, 3:5], x[0, [1, 3]])
    assert torch.allclose(out[0, 5], (x[0, 5] + x[0, 2]) / 2)
    assert s.flatten().tolist() == [1, 1, 1, 1, 1, 2]


def test_build_is_cached_and_leaves_no_temporary(tmp_path, monkeypatch):
    from edgeprune.core.backends import executorch_kernels as k

    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path))
    first = k.build()
    stamp = first.stat().st_mtime_ns
    assert k.build() == first and first.stat().st_mtime_ns == stamp
    assert first.is_relative_to(tmp_path) and first.name == "libedgeprune_kernels.so"
    # the library and the record of its sha256 (checked before every load), no temporary
    names = sorted(p.name for p in first.parent.iterdir())
    assert names == [first.name, k.record_path(first).name]
    # every operator's source is where the manifest says (kernels/<name>.cpp), and every
    # source registers the operator it is named after
    for op in k.OPS:
        assert f'Kernel("{op}"' in k.source_of(op).read_text(), op
    assert sorted(k.source_of(op) for op in k.OPS) == k.sources()


def test_a_built_library_needs_no_compiler(tmp_path, monkeypatch):
    """bench or evaluate of a kernel program on a machine with the library built and no
    compiler any more; a descriptor with custom_kernels says whether it can run."""
    from edgeprune.core.backends import executorch_kernels as k
    from edgeprune.runtimes.executorch.runner import available

    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    built = k.build()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # g++ is gone
    assert k.build() == built and k.ready() == (True, "built")
    assert available(custom_kernels=True)[0]
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "empty"))
    ok, why = available(custom_kernels=True)
    assert not ok and "'g++' was not found" in why
    assert available()[0]  # without the kernels nothing changes


def test_an_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    from edgeprune.core.backends import executorch_kernels as k

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(blocker))
    with pytest.raises(EdgepruneError) as e:
        k.build()
    assert e.value.exit_code == 2 and "EDGEPRUNE_CACHE" in e.value.one_line()


def test_no_compiler_or_a_broken_source_is_one_line(tmp_path, monkeypatch):
    from edgeprune.core.backends import executorch_kernels as k

    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(MissingRuntimeError) as e:
        k.build()
    assert e.value.exit_code == 2 and "C++ compiler" in e.value.one_line()
    monkeypatch.delenv("CXX")
    src = tmp_path / "kernels"
    src.mkdir()
    (src / "broken.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(k, "SOURCES", src)
    with pytest.raises(EdgepruneError, match="building edgeprune's ExecuTorch kernels failed"):
        k.build()
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


@pytest.fixture
def micro(builtin_arch):
    return builtin_arch(MICRO)


def test_cli_export_with_custom_kernels_records_them_and_bench_loads_them(cli, micro, tmp_path):
    out = tmp_path / "m.pte"
    spec = f"{micro}:tome@r2"
    code, _, err = cli(
        "export", spec, "-t", "executorch", "--custom-kernels", "--parity-inputs", "2", "-o", out
    )
    assert code == 0, err
    from edgeprune.export.manifest import manifest_path

    man = json.loads(manifest_path(out).read_text())
    assert man["custom_kernels"]["ops"] == ["edgeprune::tome_merge.out"]
    assert man["custom_kernels"]["sources"] == ["edgeprune/core/backends/kernels/tome_merge.cpp"]
    assert man["xnnpack"]["ops_outside_delegates"] == {"edgeprune.tome_merge": MICRO.depth}
    assert man["parity"]["status"] == "passed"
    code, text, err = cli("bench", out, "--runs", "5", "--threads", "1")
    assert code == 0, err
    assert "median" in text


def test_cli_custom_kernels_without_a_compiler_writes_nothing(cli, micro, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out" / "m.pte"
    out.parent.mkdir()
    args = ["export", f"{micro}:tome@r2", "-t", "executorch", "--custom-kernels", "-o", out]
    code, _, err = cli(*args)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "no-such-compiler-here" in errors[0], err
    assert "Traceback" not in err and list(out.parent.iterdir()) == []


def test_profile_on_the_kernels_device_lowers_with_them_and_records_it(
    cli, tmp_path, monkeypatch, builtin_arch
):
    """``cpu-xnnpack-kernels`` (custom_kernels = true): the ToMe selector pieces are
    lowered with the kernel, the table says so, and validate-profile / budget --verify
    (``LocalModels``) export the models they time the same way."""
    from edgeprune.latency.table import load
    from edgeprune.profiling.validate import LocalModels

    # 65 tokens: ToMe's default r = 16 fits
    arch = Arch("et_kmicro65", embed_dim=48, num_heads=3, img_size=128, num_classes=10)
    builtin_arch(arch)
    from edgeprune.export.executorch import target as et_export

    lowered, real_lower = [], et_export.lower

    def spy_lower(*args, **kwargs):
        low = real_lower(*args, **kwargs)
        lowered.append(low.buffer)
        return low

    monkeypatch.setattr(et_export, "lower", spy_lower)
    p = tmp_path / "p.json"
    code, _, err = cli(
        "profile", "--device", "cpu-xnnpack-kernels", "--arch", arch.name, "--method", "tome",
        "--grid", "1,65", "--runs", "3", "--check-points", "0", "--chain", "1",
        "--no-halves", "--no-e2e", "--threads", "1", "--no-plot", "--out", p,
    )  # fmt: skip
    assert code == 0, err
    t = load(p)
    assert t.device["name"] == "cpu-xnnpack-kernels" and t.device["custom_kernels"] is True
    assert "tome" in t.selectors
    # the selector pieces were lowered with the kernel (every piece goes through lower)
    assert any(b"edgeprune::tome_merge" in buf for buf in lowered), len(lowered)
    # validate-profile and budget --verify hand the table's flag to LocalModels (they
    # take keep-ratio schedules, so a DynamicViT table on the same device stands in)
    from edgeprune.budget import verify
    from edgeprune.latency.model import load_model
    from edgeprune.profiling import validate

    q = tmp_path / "q.json"
    code, _, err = cli(
        "profile", "--device", "cpu-xnnpack-kernels", "--arch", arch.name, "--method",
        "dynamicvit", "--grid", "1,65", "--runs", "3", "--check-points", "0", "--chain", "1",
        "--no-halves", "--no-e2e", "--threads", "1", "--no-plot", "--out", q,
    )  # fmt: skip
    assert code == 0, err

    class _Stop(Exception):
        pass

    seen = []

    class _Spy:
        def __init__(self, *args, **kwargs):
            seen.append(args[4] if len(args) > 4 else kwargs.get("kernels"))
            raise _Stop

    monkeypatch.setattr(validate, "LocalModels", _Spy)
    model = load_model(q)
    with pytest.raises(_Stop):
        validate.validate_profile(model, configs=1, rounds=3)
    with pytest.raises(_Stop):
        verify.verify_budget(model, lambda **_: None, None, rounds=3, models=_Spy)
    assert seen == [True, True]
    for kernels in (True, False):
        with LocalModels("executorch", 1, 1, kernels=kernels) as here:
            here.load(tome_source(), "tome")
            (pte,) = Path(here._tmp.name).glob("*.pte")
            assert (b"edgeprune::tome_merge" in pte.read_bytes()) is kernels
