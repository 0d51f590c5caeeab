"""``bench --ops`` (issue #32, item 1): the per-operator profile of a real export under
ONNX Runtime's session profiler, its groups checked against the ONNX graph counted here
independently, the pruned graph beside the dense one, its JSON, text and PNG; the
trtexec profile reader (on a stand-in file), the ETDump reader and the one-line refusals."""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.profiling import ops as ops_mod
from edgeprune.profiling.bench_ops import ETDUMP_LINE, OpsOptions, ops_profile
from edgeprune.profiling.ops import etdump_times, node_groups, read_trtexec_profile
from edgeprune.render.ops import ops_lines

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """deit_tiny dense and SPViT exported as the CLI does (manifests beside them)."""
    from edgeprune.cli.app import main

    d = tmp_path_factory.mktemp("ops")
    for src, name in (("deit_tiny:spvit", "spvit.onnx"), ("deit_tiny", "dense.onnx")):
        assert main(["export", src, "--out", str(d / name), "--parity-inputs", "1"]) == 0
    return d


def optimized_graph(path: Path) -> onnx.GraphProto:
    """The graph onnxruntime runs (after its fusions), saved by a session of our own."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath).graph


def independent_block_counts(graph: onnx.GraphProto) -> Counter:
    """Nodes per block, counted here without edgeprune's rules: a node whose name holds
    ``blocks.N`` or that reads a ``blocks.N.*`` weight, and a node lying in graph order
    between two such nodes of the same block."""
    weights = {i.name for i in graph.initializer}

    def said(n) -> int | None:
        if m := re.search(r"blocks\.(\d+)[/.]", n.name):
            return int(m[1])
        hits = [re.match(r"blocks\.(\d+)\.", i) for i in n.input if i in weights]
        return next((int(m[1]) for m in hits if m), None)

    tags = [said(n) for n in graph.node]
    counts = Counter()
    for i, t in enumerate(tags):
        before = next((x for x in reversed(tags[:i]) if x is not None), None)
        after = next((x for x in tags[i + 1 :] if x is not None), None)
        block = t if t is not None else (before if before == after else None)
        if block is not None:
            counts[f"block {block}"] += 1
    return counts


def check_counts(profile: dict, graph: onnx.GraphProto) -> None:
    """The profile's node counts against the ONNX graph: every node once, the op kinds
    exactly, blocks 0-10 exactly as counted independently; block 11 may hold one node
    more (the reshape after its last weight, before the head's fused LayerNorm)."""
    assert sum(r["nodes"] for r in profile["blocks"]) == len(graph.node)
    assert {r["name"]: r["nodes"] for r in profile["kinds"]} == Counter(
        n.op_type for n in graph.node
    )
    mine = {r["name"]: r["nodes"] for r in profile["blocks"]}
    theirs = independent_block_counts(graph)
    for b in range(11):
        assert mine[f"block {b}"] == theirs[f"block {b}"], b
    assert 0 <= mine["block 11"] - theirs["block 11"] <= 1


def later_blocks_ms(profile: dict, first: int = 3) -> float:
    return sum(
        r["ms"] for r in profile["blocks"] if r["name"].startswith("block ")
        and int(r["name"].split()[1]) >= first
    )  # fmt: skip


def test_bench_ops_spvit_beside_dense(exports, cli, monkeypatch):
    """The real thing: an SPViT export profiled here, the dense DeiT-T exported from its
    manifest's arch and profiled beside it; text in 80 columns, JSON and PNG written."""
    monkeypatch.setenv("COLUMNS", "80")
    out = exports / "spvit.ops.json"
    code, text, err = cli(
        "bench", exports / "spvit.onnx", "--runs", "3", "--threads", "1", "--ops",
        "--ops-out", out,
    )  # fmt: skip
    assert code == 0, err
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [ln for ln in lines if len(ln) > 80]
    assert any(line.startswith("block 11 ") for line in lines)
    assert any(line.startswith("selector ") for line in lines)
    assert "dense ms" in text and "op kind" in text and "Gemm" in text
    data = json.loads(out.read_text())
    assert data["schema"] == "edgeprune.ops" and data["version"] == 1
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    p, d = data["profile"], data["baseline"]
    assert "dense deit_tiny" in data["baseline_from"] and d["model"] == "dense deit_tiny"
    for prof in (p, d):
        assert prof["runtime"] == "onnxruntime" and prof["runs"] == 3 and prof["threads"] == 1
        for key in ("blocks", "kinds"):
            assert sum(r["ms"] for r in prof[key]) == pytest.approx(prof["node_ms"], rel=0.03)
            assert sum(r["share"] for r in prof[key]) == pytest.approx(1.0, abs=1e-6)
            assert all(set(r) >= {"name", "ms", "share", "nodes"} for r in prof[key])
        assert prof["run_ms"] >= prof["node_ms"] * 0.9 and prof["outside_ms"] is not None
    check_counts(p, optimized_graph(exports / "spvit.onnx"))
    check_counts(d, optimized_graph(exports / "dense.onnx"))
    assert [r["name"] for r in p["blocks"]][:2] == ["embed", "block 0"]
    assert "selector" in {r["name"] for r in p["blocks"]}
    assert "selector" not in {r["name"] for r in d["blocks"]}
    # SPViT keeps 122, 75, 30 of 197 tokens from block 3 on: less time there than dense
    assert later_blocks_ms(p) < later_blocks_ms(d)


def test_bench_ops_json_of_a_dense_artifact(exports, cli):
    """--json carries the profile; a dense artifact has no dense model beside it."""
    code, text, err = cli("bench", exports / "dense.onnx", "--runs", "3", "--ops", "--json")
    assert code == 0, err
    ops = json.loads(text)["ops"]
    assert ops["baseline"] is None and "dense model itself" in ops["baseline_from"]
    assert ops["profile"]["node_ms"] > 0 and len(ops["profile"]["blocks"]) == 14


def test_ops_baseline_file(exports):
    """--ops-baseline FILE: that model beside, said so."""
    opts = OpsOptions(baseline=exports / "dense.onnx", runs=2, warmup=1)
    res = ops_profile(exports / "spvit.onnx", 1, opts)
    assert res.baseline_from == f"--ops-baseline {exports / 'dense.onnx'}"
    assert res.baseline.model == "dense.onnx" and res.profile.model == "spvit.onnx"


def test_pte_gives_one_line_and_delegate_counts(tmp_path):
    """Here a .pte has no per-op times (no ETDump): one line, then the manifest's
    delegate counts, labelled as counts."""
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"not read: the counts come from the manifest")
    report = {
        "delegate_segments": 4, "ops_in_delegates": 566,
        "ops_outside_delegates": {"topk": 3, "index_select": 3},
    }  # fmt: skip
    manifest = {"artifact": "m.pte", "target": "executorch", "xnnpack": report}
    (tmp_path / "m.pte.manifest.json").write_text(json.dumps(manifest))
    res = ops_profile(pte, 1, OpsOptions())
    assert res.profile is None and res.notes == [ETDUMP_LINE]
    assert res.counts["ops_in_delegates"] == 566
    text = ops_lines(res)
    assert len(ETDUMP_LINE) <= 80 and text[0] == ETDUMP_LINE
    assert text[1].startswith("counts, not times: 566 ops in 4 XNNPACK delegate segments, 6 ops")
    assert all(len(line) <= 80 for line in text)


# ---- node groups on hand-made graphs ------------------------------------------------------
def test_groups_between_blocks_by_data_flow():
    """An unnamed node between two nodes of one block is in it (a reshape after the last
    weight); a TopK and what feeds it between two blocks (A-ViT's halting) and the
    gather by it are selector work."""
    w = {"blocks.0.fc.bias", "blocks.1.fc.bias", "patch_embed.w"}
    nodes = [
        ("/patch_embed/Conv", ["x", "patch_embed.w"], ["e"]),
        ("Gemm_1", ["e", "blocks.0.fc.bias"], ["a"]),
        ("Gelu", ["a"], ["b"]),
        ("Gemm_2", ["b", "blocks.0.fc.bias"], ["c"]),
        ("Reshape_3", ["c"], ["d"]),
        ("/blocks.0/Add_1", ["d", "e"], ["r"]),
        ("/Exp", ["r"], ["h"]),
        ("/TopK", ["h"], ["i"]),
        ("/GatherND", ["r", "i"], ["g"]),
        ("Gemm_4", ["g", "blocks.1.fc.bias"], ["y"]),
    ]
    kinds = ["Conv", "Gemm", "Gelu", "Gemm", "Reshape", "Add", "Exp", "TopK", "GatherND", "Gemm"]
    groups = node_groups(nodes, w, kinds)
    assert groups["Gelu"] == groups["Reshape_3"] == "block 0"
    assert groups["/Exp"] == groups["/TopK"] == groups["/GatherND"] == "selector"
    assert groups["/patch_embed/Conv"] == "embed" and groups["Gemm_4"] == "block 1"


def test_groups_by_name_alone_and_without_anchors():
    named = [("/blocks.2/attn/MatMul", (), ()), ("Gelu_1", (), ()), ("/blocks.2/Add", (), ())]
    assert set(node_groups(named, set()).values()) == {"block 2"}
    assert node_groups([("Gemm_1", ["x"], ["y"])], set()) == {"Gemm_1": "other"}


# ---- profiles read from a device's file -------------------------------------------------
def test_trtexec_profile_stand_in(tmp_path):
    """A STAND-IN for ``trtexec --dumpProfile --exportProfile=FILE`` (no TensorRT here):
    written from TensorRT's documented format, a {"count": N} record then one record per
    layer ({"name", "timeMs", "averageMs", "medianMs", "percentage"}), layer names as
    TensorRT gives ONNX nodes (fused: "A + B", Myelin: "{ForeignNode[...]}")."""
    layers = [
        ("/patch_embed/proj/Conv", 0.10),
        ("/blocks.0/norm1/LayerNormalization", 0.02),
        ("/blocks.0/attn/qkv/MatMul + /blocks.0/attn/qkv/Add", 0.20),
        ("{ForeignNode[/blocks.0/attn/Transpose.../blocks.0/Add_1]}", 0.40),
        ("Reformatting CopyNode for Input Tensor 0 to /blocks.1/norm1/LayerNormalization", 0.01),
        ("/blocks.1/norm1/LayerNormalization", 0.02),
        ("PWN(/blocks.1/mlp/act/Mul, /blocks.1/mlp/act/Erf)", 0.05),
        ("/head/Gemm", 0.03),
    ]
    records = [{"count": 250}] + [
        {"name": n, "timeMs": ms * 250, "averageMs": ms, "medianMs": ms, "percentage": ms / 0.0083}
        for n, ms in layers
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(records))
    prof = read_trtexec_profile(path)
    assert prof.runs == 250 and prof.runtime == "tensorrt"
    assert prof.node_ms == pytest.approx(0.83)
    blocks = {r.name: (round(r.ms, 6), r.nodes) for r in prof.blocks}
    assert blocks == {
        "embed": (0.10, 1), "block 0": (0.62, 3), "block 1": (0.08, 3), "head": (0.03, 1)
    }  # fmt: skip
    kinds = {r.name for r in prof.kinds}
    assert {"ForeignNode (Myelin)", "PWN (pointwise)", "Reformat", "MatMul", "Gemm"} <= kinds
    path.write_text(json.dumps([{"count": 3}, {"name": "x", "averageMs": "fast"}]))
    with pytest.raises(EdgepruneError, match="averageMs"):
        read_trtexec_profile(path)


def test_etdump_times_delegated_against_not():
    """ETDump events (as the Inspector gives them, ms per run) → delegated / not."""
    events = [
        (0, "Method::execute", False, [5.0, 5.2, 5.1]),
        (1, "DELEGATE_CALL", False, [4.0, 4.0, 4.0]),
        (2, "Fully Connected (NC, F32) GEMM #1", True, [2.0, 2.0, 2.0]),
        (3, "Softmax (NC, F32) #2", True, [1.0, 1.0, 1.0]),
        (4, "native_call_topk.out", False, [0.5, 0.5, 0.5]),
    ]
    times, runs = etdump_times(events)
    total, blocks, kinds = ops_mod.aggregate(times, runs)
    assert runs == 3 and total == pytest.approx(4.5)
    assert {r.name: round(r.ms, 6) for r in blocks} == {"delegated": 4.0, "not delegated": 0.5}
    assert {r.name for r in kinds} == {
        "Fully Connected (NC, F32) GEMM", "Softmax (NC, F32)", "delegate call", "topk"
    }  # fmt: skip


def standin_etdump(path: Path) -> None:
    """A STAND-IN ETDump (this machine's runtime records none): ExecuTorch's own
    serializer, size-prefixed as a runner writes it; three runs of one delegate call
    holding two XNNPACK ops, and one portable op."""
    schema = pytest.importorskip("executorch.devtools.etdump.schema_flatcc")
    serialize = pytest.importorskip("executorch.devtools.etdump.serialize")

    def event(name, t0, t1, instruction, debug=None):
        pe = schema.ProfileEvent(
            name=name, chain_index=0, instruction_id=instruction, delegate_debug_id_int=-1,
            delegate_debug_id_str=debug, delegate_debug_metadata=None,
            start_time=t0, end_time=t1,
        )  # fmt: skip
        return schema.Event(profile_event=pe, allocation_event=None, debug_event=None)

    runs = []
    for r in range(3):
        t = r * 10_000_000
        evs = [
            event("Method::execute", t, t + 5_000_000, -1),
            event("DELEGATE_CALL", t + 10, t + 4_000_010, 0),
            event(None, t + 20, t + 2_000_020, 0, "Fully Connected (NC, F32) GEMM #1"),
            event(None, t + 2_000_020, t + 3_000_020, 0, "Softmax (NC, F32) #2"),
            event("native_call_topk.out", t + 4_000_010, t + 4_500_010, 1),
        ]
        runs.append(
            schema.RunData(name="forward", bundled_input_index=-1, allocators=[], events=evs)
        )
    data = serialize.serialize_to_etdump_flatcc(schema.ETDumpFlatCC(version=0, run_data=runs))
    path.write_bytes(struct.pack("<I", len(data)) + data)


@pytest.mark.slow
def test_etdump_read_with_the_inspector(tmp_path):
    path = tmp_path / "phone.etdp"
    standin_etdump(path)
    prof = ops_mod.read_etdump(path)
    assert prof.runs == 3 and prof.runtime == "executorch"
    assert {r.name: round(r.ms, 3) for r in prof.blocks} == {
        "delegated": 4.0, "not delegated": 0.5
    }  # fmt: skip


def test_etdump_without_the_inspector_is_one_line(exports, cli, monkeypatch):
    """Where ExecuTorch's devtools do not import: one line, exit 2, before any timing."""

    def unavailable(module: str = ""):
        raise MissingRuntimeError("the executorch package is not installed", "pip install …")

    monkeypatch.setattr(ops_mod, "import_executorch", unavailable)
    etdump = exports / "phone.etdp"
    etdump.write_bytes(b"\x10\x00\x00\x00\x0c\x00\x00\x00ED00" + bytes(16))
    code, _out, err = cli("bench", exports / "dense.onnx", "--runs", "3", "--etdump", etdump)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "devtools Inspector is not available" in lines[0]
