"""Fallbacks named at export (issue 32, item 2): the ops an artifact runs outside the
delegate or execution provider it was exported for are listed in its manifest, printed
in one warning by ``export``, listed by ``check``, and fail ``check --strict``.

References: for ExecuTorch, the lowered edge graph's nodes outside the XNNPACK
delegates (the product reads the serialized program's kernel calls instead); for ONNX
Runtime, the node count of the graph the session itself optimized (saved by the test)."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from edgeprune.core.arch import Arch
from edgeprune.export import fallbacks
from edgeprune.export.manifest import manifest_path

et = pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')

TINY = Arch("fb_tiny", embed_dim=48, num_heads=3, depth=3, img_size=64, num_classes=10)


@pytest.fixture(scope="module")
def pruned_pte(tmp_path_factory):
    """A tiny SPViT exported by the CLI: its output, manifest and warning line."""
    from edgeprune.cli.app import main
    from edgeprune.core.arch import ARCHS

    d = tmp_path_factory.mktemp("fb")
    out = d / "m.pte"
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryFile("w+") as err:
        mp.setitem(ARCHS, TINY.name, TINY)
        mp.setattr("sys.stderr", err)
        code = main(["export", f"{TINY.name}:spvit", "-t", "executorch", "-o", str(out),
                     "--locs", "1,2", "--keep", "0.5,0.25", "--parity-inputs", "2"])  # fmt: skip
        err.seek(0)
        warnings = [ln for ln in err.read().splitlines() if ln.startswith("warning:")]
    assert code == 0
    return out, json.loads(manifest_path(out).read_text()), warnings


def _base(op: str) -> str:
    """``aten::scatter.value_out`` and ``scatter.value`` both as ``scatter``."""
    return op.split("::")[-1].split(".")[0]


def test_executorch_fallbacks_are_the_kernel_calls_outside_the_delegates(pruned_pte):
    _out, man, _ = pruned_pte
    fb = man["fallbacks"]
    assert fb["requested"] == "XnnpackBackend" and fb["checked"] is True
    assert fb["count"] == sum(fb["ops"].values()) > 0
    assert all(op.startswith("aten::") for op in fb["ops"]), fb
    # the lowered graph's nodes outside the delegates, views aside (ExecuTorch's memory
    # planning makes a view_copy a view of its input: no kernel runs for it)
    graph = Counter()
    for op, n in man["xnnpack"]["ops_outside_delegates"].items():
        if _base(op) != "view_copy":
            graph[_base(op)] += n
    program = Counter()
    for op, n in fb["ops"].items():
        program[_base(op)] += n
    assert program == graph and program["topk"] == 2, (program, graph)


def test_export_names_them_in_one_warning(pruned_pte):
    _out, man, warnings = pruned_pte
    assert len(warnings) == 1, warnings
    w = warnings[0]
    assert f"{man['fallbacks']['count']} op(s) run outside XnnpackBackend" in w
    assert all(f"{op} ×{n}" in w for op, n in man["fallbacks"]["ops"].items()), w


def test_check_lists_them_and_strict_fails_on_them(cli, pruned_pte):
    out, man, _ = pruned_pte
    code, text, err = cli("check", out)
    assert code == 0, err
    assert "fallback" in text and "aten::topk.values" in text
    code, text, _ = cli("check", out, "--strict")
    assert code == 1 and "aten::topk.values" in text


def test_a_dense_program_has_none_and_passes_strict(cli, tmp_path, builtin_arch):
    name = builtin_arch(replace(TINY, name="fb_dense"))
    out = tmp_path / "d.pte"
    code, _, err = cli("export", name, "-t", "executorch", "-o", out, "--parity-inputs", "1")
    assert code == 0 and "warning:" not in err, err
    fb = json.loads(manifest_path(out).read_text())["fallbacks"]
    assert fb["count"] == 0 and fb["ops"] == {} and fb["checked"] is True
    code, text, _ = cli("check", out, "--strict")
    assert code == 0 and "clean" in text


def test_check_of_an_artifact_without_a_manifest_is_one_line(cli, tmp_path):
    f = tmp_path / "m.pte"
    f.write_bytes(b"\0" * 64)
    code, _, err = cli("check", f, "--strict")
    assert code == 2 and "is not an ONNX graph and has no manifest" in err


def test_a_damaged_fallbacks_record_is_one_line(cli, pruned_pte, tmp_path):
    out, man, _ = pruned_pte
    copy = tmp_path / "c.pte"
    copy.write_bytes(out.read_bytes())
    bad = {**man, "artifact": copy.name, "fallbacks": {**man["fallbacks"], "ops": {"x": -1}}}
    manifest_path(copy).write_text(json.dumps(bad))
    code, _, err = cli("check", copy, "--strict")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "fallbacks.ops.x" in lines[0], err


# ---- ONNX Runtime ---------------------------------------------------------------------
def test_ort_nodes_on_the_asked_provider_are_no_fallback(tmp_path):
    from edgeprune.export.onnx import export_onnx
    from tests.test_executorch import tiny_source

    out = tmp_path / "m.onnx"
    export_onnx(tiny_source("dynamicvit"), out, n_parity_inputs=1)
    fb = fallbacks.ort_assignment(out)
    assert fb == fallbacks.record(fallbacks.ORT_CPU, {}, fb["how"]) and fb["checked"]
    # asked for a provider the nodes were not placed on, every node of the session's own
    # optimized graph is a fallback: the count is that graph's, saved by the session
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out), so, providers=[fallbacks.ORT_CPU])
    nodes = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    away = fallbacks.away_from(fallbacks.node_placements(out), "OtherExecutionProvider")
    assert away == dict(nodes), (away, nodes)


def test_ort_provider_not_installed_here_is_recorded_as_not_checked(tmp_path):
    fb = fallbacks.ort_assignment(Path(tmp_path / "unused.onnx"), "NnapiExecutionProvider")
    assert fb["checked"] is False and fb["count"] == 0
    assert fb["how"].startswith("not checked: this onnxruntime has") and "CPU" in fb["how"]
    assert fallbacks.summary(fb) is None and fallbacks.findings(fb) == []
