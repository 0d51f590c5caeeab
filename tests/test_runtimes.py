"""Runners: onnxruntime for real; trtexec's output format and command line; CoreML's
'needs macOS'; a missing TensorRT."""

from __future__ import annotations

import json
import platform
import stat

import numpy as np
import pytest

from edgeprune.core.arch import get_arch
from edgeprune.core.backends.runner import get_runner
from edgeprune.core.backends.tensorrt import parse_trtexec_version
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.profiling.pieces import make_block, module_to_onnx
from edgeprune.runtimes.tensorrt.runner import TrtexecRunner, parse_export_times, trtexec_argv
from edgeprune.runtimes.timing import (
    Timing,
    TimingPolicy,
    interleave_bursts,
    interleave_samples,
    percentile,
)


@pytest.fixture(scope="module")
def block_onnx() -> bytes:
    return module_to_onnx(make_block(get_arch("deit_tiny")), (1, 8, 192))


def test_onnxruntime_runner_runs_and_times(block_onnx):
    r = get_runner("onnxruntime", threads=1)
    r.load(block_onnx)
    assert r.input_shapes() == {"input": (1, 8, 192)}
    (y,) = r.run(np.zeros((1, 8, 192), np.float32))
    assert y.shape == (1, 8, 192)
    t = r.time(TimingPolicy.fixed(5, warmup=1))
    assert t.runs == 5 and t.threads == 1 and t.runtime == "onnxruntime"
    assert t.runtime_version and t.min_ms <= t.median_ms <= t.p90_ms <= t.max_ms


@pytest.mark.parametrize("threads, stops", [(1, None), (2, "1"), (None, "1")])
def test_multi_threaded_sessions_stop_spinning_after_each_run(block_onnx, threads, stops):
    """Interleaved timing runs two sessions in turn: a pool left spinning after its run
    would steal a core from the next one (see ``STOP_SPINNING``)."""
    from edgeprune.runtimes.onnxruntime import STOP_SPINNING, make_session

    opts = make_session(block_onnx, threads=threads).get_session_options()
    key = STOP_SPINNING[0]
    assert (opts.get_session_config_entry(key) if stops else None) == stops
    if stops is None:
        with pytest.raises(RuntimeError, match="does not have"):
            opts.get_session_config_entry(key)
    assert opts.intra_op_num_threads == (threads or 0)


def test_onnxruntime_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = get_runner("onnxruntime")
    with pytest.raises(EdgepruneError, match="cannot load"):
        r.load(bad)


def test_timing_stats():
    t = Timing.from_samples([5.0, 1.0, 2.0, 3.0, 4.0])
    assert (t.median_ms, t.min_ms, t.max_ms, t.runs) == (3.0, 1.0, 5.0, 5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)


def _trace(n: int, warm: int, latency: float) -> list[dict]:
    """Rows as trtexec's exportJSONTrace writes them (samples/common/sampleReporting.cpp)."""
    rows, t = [], 0.0
    for i in range(n):
        lat = 9.0 if i < warm else latency + 0.01 * (i % 3)
        rows.append(
            {
                "startEnqMs": t,
                "endEnqMs": t + 0.1,
                "startH2dMs": t,
                "endH2dMs": t,
                "startComputeMs": t + 0.1,
                "endComputeMs": t + lat,
                "startD2hMs": t + lat,
                "endD2hMs": t + lat,
                "h2dMs": 0,
                "computeMs": lat - 0.1,
                "d2hMs": 0,
                "latencyMs": lat,
                "endToEndMs": lat,
            }
        )
        t += 80.0 if i < warm else lat
    return rows


def test_interleaved_bursts_rotate_and_samples_drop_each_bursts_first_run():
    """Rounds rotate who goes first (A B, B A, …), a burst runs one fn back to back;
    the samples keep every run at burst 1 and all but each burst's first otherwise."""
    calls: list[str] = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    bursts = interleave_bursts(fns, rounds=3, warmup=1, burst=2)
    assert "".join(calls) == "ab" + "aabb" + "bbaa" + "aabb"
    assert [len(per_fn) for per_fn in bursts] == [3, 3]
    assert all(len(runs) == 2 for per_fn in bursts for runs in per_fn)
    assert [len(s) for s in interleave_samples(fns, rounds=3, warmup=0, burst=2)] == [3, 3]
    assert [len(s) for s in interleave_samples(fns, rounds=3, warmup=0, burst=1)] == [3, 3]
    with pytest.raises(ValueError):
        interleave_bursts(fns, burst=0)


def test_interleaved_rounds_go_on_until_every_interval_is_within_the_tolerance():
    """With a tolerance, ``rounds`` is a minimum: a tolerance no interval can meet runs
    to 4 × rounds (or ``max_rounds``), one every interval meets stops at ``rounds``."""
    fns = [lambda: None, lambda: None]
    rounds_of = lambda bursts: {len(per_fn) for per_fn in bursts}  # noqa: E731
    assert rounds_of(interleave_bursts(fns, rounds=8, warmup=0)) == {8}
    assert rounds_of(interleave_bursts(fns, rounds=8, warmup=0, tolerance=1e-12)) == {32}
    assert rounds_of(interleave_bursts(fns, 8, 0, tolerance=1e-12, max_rounds=11)) == {11}
    assert rounds_of(interleave_bursts(fns, rounds=8, warmup=0, tolerance=1e9)) == {8}
    # too few runs for an interval (3 rounds of bursts of 2, each burst's first dropped):
    # never within any tolerance, so the rounds go on
    assert rounds_of(interleave_bursts(fns, 3, 0, burst=2, tolerance=1e9)) == {6}


def test_parse_export_times_drops_warmup():
    text = json.dumps(_trace(30, warm=3, latency=2.0), indent=1)
    samples = parse_export_times(text, warmup_ms=200.0)
    assert len(samples) == 27 and max(samples) < 2.1
    assert len(parse_export_times(text)) == 30
    assert parse_export_times(text, metric="computeMs")[5] == pytest.approx(1.9, abs=0.03)


def test_parse_export_times_tolerates_nan_and_rejects_junk():
    text = '[\n  { "latencyMs" : 1.5, "computeMs" : -nan }\n, { "latencyMs" : 2.5 }\n]\n'
    assert parse_export_times(text) == [1.5, 2.5]
    with pytest.raises(EdgepruneError, match="not JSON"):
        parse_export_times("[{")
    with pytest.raises(EdgepruneError, match="no 'latencyMs'"):
        parse_export_times('[{"count": 3}]')


def test_trtexec_versions_and_precision_flags(tmp_path):
    assert parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] #") == (10, 3, 0)
    assert parse_trtexec_version("[TensorRT v110000]") == (11, 0, 0)
    assert parse_trtexec_version("[TensorRT v8601]") == (8, 6, 1)
    p = TimingPolicy.fixed(50)
    v10 = trtexec_argv("trtexec", "m.onnx", "t.json", "fp16", 10, p)
    v11 = trtexec_argv("trtexec", "m.onnx", "t.json", "fp16", 11, p)
    assert "--fp16" in v10 and "--exportTimes=t.json" in v10
    assert not any(a in v11 for a in ("--fp16", "--int8", "--best"))  # strongly typed only


FAKE_TRTEXEC = """#!/bin/sh
# stands in for trtexec: prints its banner, writes --exportTimes in the documented format
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{ver}] # trtexec $*"
for a in "$@"; do case "$a" in --exportTimes=*) out="${{a#--exportTimes=}}";; esac; done
[ -n "$out" ] && cp "{trace}" "$out"
exit 0
"""


def _fake_trtexec(tmp_path, ver: str):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(_trace(20, warm=3, latency=1.25)))
    exe = tmp_path / "trtexec"
    exe.write_text(FAKE_TRTEXEC.format(ver=ver, trace=trace))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_trtexec_runner_plumbing(tmp_path, block_onnx):
    exe = _fake_trtexec(tmp_path, "100300")
    r = TrtexecRunner(precision="fp16", trtexec=str(exe))
    r.load(block_onnx)
    t = r.time(TimingPolicy.fixed(10))
    assert r.version() == "10.3.0" and t.runs == 17
    assert t.median_ms == pytest.approx(1.26, abs=0.02) and t.extra["via"] == "trtexec"


def test_trtexec_11_needs_fp16_in_the_onnx(tmp_path, block_onnx):
    r = TrtexecRunner(precision="fp16", trtexec=str(_fake_trtexec(tmp_path, "110000")))
    r.load(block_onnx)
    with pytest.raises(EdgepruneError, match="strongly typed"):
        r.time(TimingPolicy.fixed(5))


def test_tensorrt_missing_says_so(monkeypatch, tmp_path):
    pytest.importorskip("onnx")
    monkeypatch.setenv("PATH", str(tmp_path))
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(MissingRuntimeError, match="trtexec"):
        get_runner("tensorrt")


@pytest.mark.skipif(platform.system() == "Darwin", reason="CoreML runs on macOS")
def test_coreml_needs_macos():
    with pytest.raises(MissingRuntimeError, match="needs macOS"):
        get_runner("coreml")


def test_export_builder_shares_trtexec_lookup_and_version(tmp_path, monkeypatch):
    """The export side finds trtexec and reads its version with the profiler's code
    (TensorRT 8's v8601 banner is 8.6.1, not 0.86.1)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("the tensorrt Python API is installed: find_builder prefers it")
    from edgeprune.core.backends.tensorrt import find_builder

    exe = _fake_trtexec(tmp_path, "8601")
    monkeypatch.setenv("PATH", str(tmp_path))
    b = find_builder()
    assert b.kind == "trtexec" and b.path == str(exe) and b.version == "8.6.1" and b.major == 8
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert find_builder() is None
