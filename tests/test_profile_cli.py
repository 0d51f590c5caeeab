"""profile, bench, devices through the CLI, on this machine's onnxruntime."""

from __future__ import annotations

import json
import platform

import pytest

from edgeprune.core.arch import get_arch
from edgeprune.latency.table import load
from edgeprune.profiles.devices import all_devices, get_device
from edgeprune.profiling.pieces import make_block, module_to_onnx
from edgeprune.profiling.sweep import anchor_specs, check_grid_points, default_grid, parse_grid

FAST = ("--arch", "deit_tiny", "--grid", "1,32,197", "--runs", "3", "--check-points", "1",
        "--no-e2e")  # fmt: skip
FAST_E2E = FAST[:-1]


def test_descriptors_and_alias():
    devs = all_devices()
    assert {"cpu", "jetson-orin-nano", "jetson-agx-orin", "iphone", "android-arm64"} <= set(devs)
    assert get_device("jetson").name == "jetson-orin-nano"
    assert (
        devs["jetson-agx-orin"].runtime == "tensorrt"
        and devs["jetson-agx-orin"].precision == "fp16"
    )
    assert devs["iphone"].runtime == "coreml" and devs["android-arm64"].transport == "adb"


def test_devices_json_is_quick(cli, monkeypatch):
    import os
    import shutil
    import subprocess

    # android-arm64 is checked with `adb devices`, which starts an adb server: a private one
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(16037 + os.getpid() % 1000))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    try:
        code, out, _ = cli("devices", "--json", "--timeout", "4")
    finally:
        if shutil.which("adb"):
            subprocess.run(["adb", "kill-server"], capture_output=True, timeout=30)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["devices"]}
    assert rows["cpu"]["reachable"] is True
    assert rows["jetson-agx-orin"]["reachable"] is False and rows["jetson-agx-orin"]["why"]
    assert rows["android-arm64"]["reachable"] is False and rows["android-arm64"]["why"]
    assert rows["android-arm64"]["transport"] == "adb" and "cpu-xnnpack" in rows


def test_grid():
    g = default_grid()
    assert g[0] == 1 and g[-1] == 197 and max(b - a for a, b in zip(g, g[1:], strict=False)) <= 8
    assert parse_grid("step:16", 197)[-1] == 197 and parse_grid("8,1", 197) == [1, 8]
    assert check_grid_points([1, 9, 17], 2) == [5, 13]


def test_profile_writes_valid_table_and_plot(cli, tmp_path):
    out = tmp_path / "p.json"
    code, stdout, err = cli("profile", "--device", "cpu", *FAST_E2E, "--method", "dynamicvit",
                            "--threads", "1", "--out", out)  # fmt: skip
    assert code == 0, err
    t = load(out)
    assert t.measured and t.method == "dynamicvit" and t.batch == 1
    assert t.block.tokens == (1, 32, 197) and t.attn is not None and t.mlp is not None
    assert t.device["threads"] == 1 and t.device["runtime"] == "onnxruntime"
    assert t.device["runtime_version"] and t.device["fingerprint"]["id"]
    assert set(t.selectors["dynamicvit"].tokens) >= {197, 138, 97}  # its own stages
    assert t.embed.median_ms > 0 and t.head.median_ms > 0
    assert "interp_check" in t.extra
    # whole models timed in the same sweep: dense, the default schedule, the sparse corner
    from edgeprune.core.source import resolve
    from edgeprune.latency.model import LatencyModel

    labels = [a.label for a in t.e2e.anchors]
    assert labels[:2] == ["deit_tiny:dense", "deit_tiny:dynamicvit"] and len(labels) == 3
    assert t.e2e.anchors[1].attn_tokens == resolve("deit_tiny:dynamicvit").plan.attn_tokens
    assert all(a.median_ms > 0 for a in t.e2e.anchors) and t.e2e.scale > 0
    raw, fitted = LatencyModel(t, corrected=False), LatencyModel(t)
    specs = anchor_specs(t.arch, "dynamicvit")
    for (spec, keep), row in zip(specs, t.extra["e2e_fit"], strict=True):
        plan = resolve(spec, keep=keep).plan
        assert raw.predict(plan).total_ms == pytest.approx(row["pieces_ms"], rel=1e-9)
        assert fitted.predict(plan).total_ms == pytest.approx(row["corrected_ms"], rel=1e-9)
    assert "end-to-end: 3 whole models" in stdout
    assert "noise: passes of a point spread" in stdout and t.extra["noise"]["points"] > 0
    assert list(t.block.median_ms) == sorted(t.block.median_ms)  # the stored fit is monotone
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # refuses to overwrite without --force
    code, _, err = cli("profile", "--device", "cpu", *FAST, "--out", out)
    assert code == 2 and "--force" in err
    # validate-profile re-times the anchors beside its random schedules: machine drift
    png = tmp_path / "v.png"
    code, vout, err = cli("validate-profile", out, "--configs", "1", "--rounds", "3",
                          "--burst", "2", "--plot", png, "--json")  # fmt: skip
    assert code == 0, err
    rep = json.loads(vout)
    assert rep["burst"] == 2 and [a["label"] for a in rep["anchors"]] == labels
    assert all(a["now_ms"] > 0 for a in rep["anchors"]) and rep["drift"] > -1
    assert rep["configs"] == 1 and png.read_bytes()[:4] == b"\x89PNG"
    # the error once the measured drift is taken out: each prediction × (1 + drift)
    (r,) = rep["results"]
    scaled = abs(r["predicted_ms"] * (1 + rep["drift"]) - r["measured_ms"]) / r["measured_ms"]
    assert rep["drift_corrected"]["median_rel_error"] == pytest.approx(scaled, rel=1e-9)


def test_profile_interrupted_writes_nothing(cli, tmp_path, monkeypatch):
    from edgeprune.runtimes.onnxruntime import OnnxRuntimeRunner

    real, calls = OnnxRuntimeRunner.time, []

    def flaky(self, policy=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, policy)

    monkeypatch.setattr(OnnxRuntimeRunner, "time", flaky)
    code, out, err = cli("profile", "--device", "cpu", *FAST, "--out", tmp_path / "p.json")
    assert code == 130, out + err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--device", "toaster"), "unknown device 'toaster'"),
        (("--device", "cpu", "--arch", "vit_huge"), "unknown arch"),
        (("--device", "cpu", "--grid", "0,500"), "--grid"),
        (("--device", "cpu", "--method", "nope"), "unknown method"),
    ],
)
def test_profile_bad_input(cli, tmp_path, args, needle):
    code, _, err = cli("profile", *args, "--out", tmp_path / "p.json")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(platform.system() == "Darwin", reason="CoreML runs on macOS")
def test_profile_runtime_missing(cli, tmp_path):
    code, _, err = cli("profile", "--device", "iphone", *FAST, "--out", tmp_path / "p.json")
    assert code == 2 and "needs macOS" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def block_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("bench") / "block.onnx"
    p.write_bytes(module_to_onnx(make_block(get_arch("deit_tiny")), (1, 16, 192)))
    return p


def test_bench_json(cli, block_file):
    code, out, err = cli("bench", block_file, "--json", "--runs", "5", "--threads", "1")
    assert code == 0, err
    d = json.loads(out)
    assert d["runs"] == 5 and d["threads"] == 1 and d["median_ms"] > 0 and d["p90_ms"] > 0
    assert d["runtime"] == "onnxruntime" and d["runtime_version"]


def test_bench_bad_input(cli, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00junk")
    for args, needle in [
        ((bad,), "cannot load"),
        ((tmp_path / "none.onnx",), "does not exist"),
        ((bad, "--device", "nowhere"), "unknown device"),
    ]:
        code, _, err = cli("bench", *args)
        assert code == 2 and needle in err, err


def test_corrupt_profile(cli, tmp_path):
    p = tmp_path / "p.json"
    p.write_text('{"schema": "edgeprune.profile", "version": 1, "tab')
    code, _, err = cli("profile-info", p)
    assert code == 2 and "not a valid latency table" in err


def test_profile_resume_after_interrupt(cli, tmp_path, monkeypatch):
    """Ctrl-C mid-sweep with --resume keeps the timed pieces; the rerun times only the
    rest, writes the table and removes the partial file."""
    from edgeprune.runtimes.onnxruntime import OnnxRuntimeRunner

    real, calls, fired = OnnxRuntimeRunner.time, [], []

    def flaky(self, policy=None):
        calls.append(1)
        if len(calls) == 4 and not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return real(self, policy)

    out = tmp_path / "p.json"
    monkeypatch.setattr(OnnxRuntimeRunner, "time", flaky)
    code, _, err = cli("profile", "--device", "cpu", *FAST, "--out", out, "--resume", "--no-plot")
    assert code == 130 and "--resume" in err
    partial = tmp_path / "p.json.partial.json"
    assert not out.exists() and partial.exists()
    import json

    assert len(json.loads(partial.read_text())["timings"]) == 3
    first_run = len(calls)
    code, o2, err = cli("profile", "--device", "cpu", *FAST, "--out", out, "--resume", "--no-plot")
    assert code == 0, (o2, err, len(calls))
    assert out.exists() and not partial.exists()
    second_run = len(calls) - first_run
    # a fresh sweep of the same request, to count how many pieces it times
    calls.clear()
    code, _, _ = cli("profile", "--device", "cpu", *FAST, "--out", tmp_path / "q.json", "--no-plot")
    assert code == 0 and second_run == len(calls) - 3


def test_profile_resume_refuses_other_request(cli, tmp_path):
    out = tmp_path / "p.json"
    (tmp_path / "p.json.partial.json").write_text('{"request": {"arch": "other"}, "timings": []}')
    code, _, err = cli("profile", "--device", "cpu", *FAST, "--out", out, "--resume")
    assert code == 2 and "different sweep" in err
