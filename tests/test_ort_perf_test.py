"""``.ort``/``.onnx`` timed on an Android device with onnxruntime's own benchmark binary,
``onnxruntime_perf_test``, over adb: with the STAND-IN ``adb`` of ``test_adb.py`` (the
"device" is a local folder) and a STAND-IN ``onnxruntime_perf_test`` (a script that takes
the real binary's flags, runs the model in the real onnxruntime of this machine and
prints and writes its results in the real binary's formats). The stand-ins check the
plumbing (push, command line, parsing, cleanup, errors), not a phone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.onnxruntime import (
    OrtPerfTestRunner,
    failure_line,
    make,
    parse_result_file,
    timing_from_summary,
)
from edgeprune.runtimes.timing import TimingPolicy
from edgeprune.runtimes.transports.adb import AdbTransport
from tests.test_adb import STAND_IN_ADB, _script

PERF_TEST = "/data/local/tmp/onnxruntime_perf_test"

STAND_IN_PERF_TEST = """\
#!{python}
# A STAND-IN for onnxruntime's onnxruntime_perf_test (no Android device here): takes its
# flags (-I -m times -r N -e cpu -o L -x T -s, model_path [result_file]), runs the model in
# the real onnxruntime of this machine (one untimed warm-up run, then N timed runs) and
# prints/writes its results as onnxruntime_perf_test does. $STANDIN_PERF_SLEEP: hang.
import os, sys, time
import numpy as np, onnxruntime as ort
args, flags, pos = sys.argv[1:], {{}}, []
while args:
    a = args.pop(0)
    if a in ("-I", "-s"):
        flags[a] = True
    elif a in ("-m", "-r", "-e", "-o", "-x"):
        flags[a] = args.pop(0)
    elif a.startswith("-"):
        sys.exit(print("unknown option " + a, file=sys.stderr) or 255)
    else:
        pos.append(a)
if len(pos) not in (1, 2) or flags.get("-e", "cpu") != "cpu" or "-I" not in flags:
    sys.exit(print("usage: onnxruntime_perf_test [options...] model_path [result_file]") or 255)
if os.environ.get("STANDIN_PERF_SLEEP"):
    time.sleep(float(os.environ["STANDIN_PERF_SLEEP"]))
so = ort.SessionOptions()
so.intra_op_num_threads = int(flags.get("-x", 0))
print("Setting intra_op_num_threads to %d" % so.intra_op_num_threads)
try:
    sess = ort.InferenceSession(pos[0], so, providers=["CPUExecutionProvider"])
except Exception as e:
    sys.exit(print(str(e), file=sys.stderr) or 255)
feeds = {{i.name: np.random.rand(*i.shape).astype(np.float32) for i in sess.get_inputs()}}
sess.run(None, feeds)
times = []
for _ in range(int(flags.get("-r", 1000))):
    t0 = time.perf_counter()
    sess.run(None, feeds)
    times.append(time.perf_counter() - t0)
total = sum(times)
print("Session creation time cost: 0.01 s")
print("Total inference time cost: %g s" % total)
print("Total inference requests: %d" % len(times))
print("Average inference time cost total: %g ms" % (total / len(times) * 1e3))
s = sorted(times)
stats = "".join("%s Latency: %g s\\n" % (k, s[int(len(s) * q)]) for k, q in
                (("Min", 0), ("P50", 0.5), ("P90", 0.9)))
stats = stats + "Max Latency: %g s\\n" % s[-1]
name = os.path.basename(os.path.dirname(os.path.abspath(pos[0])))
if len(pos) == 2:
    with open(pos[1], "a") as f:
        for i, t in enumerate(times):
            f.write("%s,%g,1234,50,%d\\n" % (name, t, i))
        if "-s" in flags:
            f.write("\\n" + stats)
if len(pos) == 1 or "-s" in flags:
    sys.stdout.write(stats)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A small ONNX model (one MatMul) and the same model in ORT format."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeprune.export.ort import to_ort_format

    d = tmp_path_factory.mktemp("ortperf")
    w = numpy_helper.from_array(np.ones((64, 10), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, d / "m.onnx")
    ort_file = to_ort_format(d / "m.onnx", d / "ort")
    (d / "bad.onnx").write_bytes(b"not an onnx model")
    return {"onnx": d / "m.onnx", "ort": ort_file, "bad": d / "bad.onnx"}


@pytest.fixture
def phone(tmp_path, monkeypatch) -> Path:
    """The STAND-IN adb with one device (SER1) whose /data/local/tmp holds the STAND-IN
    onnxruntime_perf_test; returns the device's folder."""
    root = tmp_path / "device"
    (root / "data/local/tmp").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "adb", STAND_IN_ADB)
    _script(root / "data/local/tmp/onnxruntime_perf_test", STAND_IN_PERF_TEST)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_ROOT", str(root))
    monkeypatch.setenv("STANDIN_DEVICES", "SER1:device")
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    monkeypatch.delenv("STANDIN_PERF_SLEEP", raising=False)
    return root


def _left(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "data/local/tmp").iterdir())


def test_times_an_ort_over_adb_and_removes_its_folder(phone, models):
    r = make(threads=2, transport=AdbTransport(), ort_perf_test=PERF_TEST)
    assert isinstance(r, OrtPerfTestRunner)
    r.load(models["ort"])
    assert r.input_shapes() == {"input": (1, 64)}  # read from the model, here
    t = r.time(TimingPolicy.fixed(5, warmup=3))
    assert t.runs == 5 and t.threads == 2 and t.runtime == "onnxruntime"
    assert 0 < t.min_ms <= t.median_ms <= t.max_ms
    assert t.extra["where"] == "adb device SER1" and "note" not in t.extra  # per-run times
    log = (phone / "adb.log").read_text()
    # its own warm-up run + 2 more, then the 5 kept: -r 7; the model pushed as .ort
    assert "-I -m times -r 7 -e cpu -o 99 -x 2 -s" in log and "/model.ort times.txt" in log
    assert "LD_LIBRARY_PATH=/data/local/tmp " in log and "-s SER1 push" in log
    assert _left(phone) == ["onnxruntime_perf_test"]  # the fresh folder is gone

    r.load(models["onnx"].read_bytes())  # bytes (as `profile` gives its pieces): an .onnx
    assert r.time(TimingPolicy.fixed(2, warmup=1)).runs == 2
    assert "/model.onnx times.txt" in (phone / "adb.log").read_text()
    with pytest.raises(EdgepruneError, match="does not return outputs"):
        r.run(np.zeros((1, 64), np.float32))


def test_missing_binary_and_failed_run_are_one_line_and_leave_nothing(phone, models):
    with pytest.raises(MissingRuntimeError, match="no onnxruntime_perf_test given"):
        make(transport=AdbTransport(), ort_perf_test=None)
    r = make(transport=AdbTransport(), ort_perf_test="/data/local/tmp/nope")
    r.load(models["ort"])
    with pytest.raises(MissingRuntimeError) as e:
        r.time(TimingPolicy.fixed(1))
    line = e.value.one_line()
    assert "onnxruntime_perf_test not found at /data/local/tmp/nope on adb device SER1" in line
    assert "build.sh --android" in line and "\n" not in line and e.value.exit_code == 2

    r = make(transport=AdbTransport(), ort_perf_test=PERF_TEST)
    r.load(models["bad"])  # onnxruntime cannot load it there: exit 255, its message
    with pytest.raises(EdgepruneError) as e:
        r.time(TimingPolicy.fixed(1))
    line = e.value.one_line()  # the exception it printed (stderr), not its progress (stdout)
    assert "onnxruntime_perf_test failed on adb device SER1" in line and "Protobuf" in line
    assert _left(phone) == ["onnxruntime_perf_test"]


def test_timeout_stops_it_and_removes_the_folder(phone, models, monkeypatch):
    monkeypatch.setenv("STANDIN_PERF_SLEEP", "30")
    r = make(transport=AdbTransport(timeout=1.5), ort_perf_test=PERF_TEST)
    r.load(models["ort"])
    with pytest.raises(EdgepruneError, match="did not finish within 1.5 s"):
        r.time(TimingPolicy.fixed(1))
    assert _left(phone) == ["onnxruntime_perf_test"]


# ---- its output, in the real binary's formats ---------------------------------------------
RESULT_FILE = """\
edgeprune-ab12cd34,0.0125,123456789,97,0
edgeprune-ab12cd34,0.0102,123456789,97,1
edgeprune-ab12cd34,0.0101,123456789,97,2

Min Latency: 0.0101 s
Max Latency: 0.0125 s
P50 Latency: 0.0102 s
"""

SUMMARY = """\
Setting intra_op_num_threads to 4
Session creation time cost: 0.512 s
First inference time cost: 12 ms
Total inference time cost: 5.88053 s
Total inference requests: 1000
Average inference time cost total: 5.88053 ms
Total inference run time: 5.88102 s
Number of inferences per second: 170.04
Avg CPU usage: 98 %
Peak working set size: 123456789 bytes
Min Latency: 0.0559777 s
Max Latency: 0.0623472 s
P50 Latency: 0.0587108 s
P90 Latency: 0.0599845 s
P95 Latency: 0.0605676 s
P99 Latency: 0.0619517 s
P999 Latency: 0.0623472 s
"""

OLD_SUMMARY = """\
Total time cost:58.8053
Total iterations:1000
Average time cost:58.8053 ms
Min Latency is 0.0559777sec
Max Latency is 0.0623472sec
P50 Latency is 0.0587108sec
P90 Latency is 0.0599845sec
"""


def test_parses_its_result_file_and_its_printed_statistics():
    assert parse_result_file(RESULT_FILE) == pytest.approx([12.5, 10.2, 10.1])
    meta = {"threads": 4, "runtime": "onnxruntime", "runtime_version": "x"}
    for text in (SUMMARY, OLD_SUMMARY):
        t = timing_from_summary(text, {}, dict(meta))
        assert (t.median_ms, t.p90_ms) == pytest.approx((58.7108, 59.9845))
        assert (t.min_ms, t.max_ms, t.runs) == pytest.approx((55.9777, 62.3472, 1000))
        assert "P50" in t.extra["note"] and t.threads == 4
    avg_only = "Total inference requests: 20\nAverage inference time cost: 12.5 ms\n"
    t = timing_from_summary(avg_only, {}, dict(meta))
    assert t.median_ms == 12.5 and t.runs == 20 and "mean" in t.extra["note"]
    with pytest.raises(EdgepruneError, match="printed no timing"):
        timing_from_summary("Run failed:oops\n", {}, dict(meta))


def test_a_failure_is_told_by_its_own_line():
    from edgeprune.runtimes.transports import Result

    warn = "2026-11-23 [W:onnxruntime:Default, env.cc:1] a warning\n"
    out = "Setting intra_op_num_threads to 4\nRun failed:Got invalid dims\n"
    res = Result(returncode=255, stdout=out, stderr=warn)
    assert failure_line(res) == "Run failed:Got invalid dims"
    assert failure_line(Result(returncode=255, stdout="", stderr="")) == "exit 255"


def test_bench_picks_the_runner_by_the_artifacts_kind():
    from edgeprune.profiles.devices import get_device
    from edgeprune.profiling.bench import runtime_for

    android = get_device("android-arm64")
    assert android.options["ort_perf_test"] == PERF_TEST
    assert runtime_for(Path("m.ort"), android).runtime == "onnxruntime"
    assert runtime_for(Path("m.onnx"), android).runtime == "onnxruntime"
    assert runtime_for(Path("m.pte"), android).runtime == "executorch"
    jetson = get_device("jetson-orin-nano")  # trtexec times the .onnx there
    assert runtime_for(Path("m.onnx"), jetson).runtime == "tensorrt"
    assert runtime_for(Path("m.ort"), get_device("cpu")).runtime == "onnxruntime"


# ---- through the CLI ---------------------------------------------------------------------
def test_bench_ort_on_android_over_adb(cli, phone, models, monkeypatch):
    monkeypatch.setenv("STANDIN_DEVICES", "SER1:device,SER2:device")
    code, out, err = cli("bench", models["ort"], "--device", "android-arm64", "--runs", "3",
                         "--serial", "SER2", "--json")  # fmt: skip
    assert code == 0, err
    d = json.loads(out)
    assert d["device"] == "android-arm64" and d["runtime"] == "onnxruntime"
    assert d["runs"] == 3 and d["threads"] == 4 and d["median_ms"] > 0
    assert d["extra"]["where"] == "adb device SER2"
    assert d["extra"]["via"] == "onnxruntime_perf_test"
    log = (phone / "adb.log").read_text()
    assert "-s SER2 push" in log and "-x 4" in log and "-r 5" in log
    code, out, err = cli("bench", models["onnx"], "--device", "android", "--serial", "SER1",
                         "--runs", "2")  # fmt: skip
    assert code == 0 and "onnxruntime" in out, err
    assert _left(phone) == ["onnxruntime_perf_test"]


def test_bench_ort_on_android_without_the_binary_is_one_line(cli, phone, models):
    (phone / "data/local/tmp/onnxruntime_perf_test").unlink()
    code, out, err = cli("bench", models["ort"], "--device", "android-arm64", "--runs", "2")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "onnxruntime_perf_test not found at /data/local/tmp/onnxruntime_perf_test" in lines[0]
    assert "build.sh --android" in lines[0] and "Traceback" not in err and out == ""
    assert _left(phone) == []


def test_profile_on_android_ort_over_adb(cli, phone, tmp_path, monkeypatch):
    """`profile --device android-arm64-ort`: every piece exported to ONNX here, pushed and
    timed there by (the stand-in) onnxruntime_perf_test; a micro DeiT and a short grid."""
    from edgeprune.core.arch import ARCHS, Arch
    from edgeprune.latency.table import load

    micro = Arch("ort_micro", embed_dim=48, num_heads=3, img_size=64, num_classes=10)
    monkeypatch.setitem(ARCHS, micro.name, micro)
    out = tmp_path / "p.json"
    code, _, err = cli(
        "profile", "--device", "android-ort", "--arch", micro.name, "--grid", "1,17",
        "--runs", "2", "--check-points", "0", "--chain", "1", "--no-halves", "--no-e2e",
        "--threads", "1", "--no-plot", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    t = load(out)
    assert t.device["name"] == "android-arm64-ort" and t.device["runtime"] == "onnxruntime"
    assert t.device["runtime_version"] == "onnxruntime_perf_test" and t.device["threads"] == 1
    assert t.block.tokens == (1, 17) and min(t.block.median_ms) > 0 and t.head.median_ms > 0
    log = (phone / "adb.log").read_text()
    assert log.count(" push ") >= 4 and "-x 1" in log and "/model.onnx times.txt" in log
    assert _left(phone) == ["onnxruntime_perf_test"]
