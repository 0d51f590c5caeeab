"""ExecuTorch end to end through the CLI, for real (the ExecuTorch runtime runs here):
``profile --device cpu-xnnpack`` (pieces lowered to .pte) → ``predict`` → ``budget`` →
``validate-profile`` (schedules exported to .pte and timed in ExecuTorch), ``bench`` of a
.pte here, and over adb with the STAND-IN adb and executor_runner of ``test_adb.py``.

A micro DeiT (embed 48, 64 px: 17 tokens) is registered as a built-in arch for the
profile, which lowers each piece to .pte (seconds each: a short grid, no halves, no
whole-model anchors); whole models are 2-block DeiTs."""

from __future__ import annotations

import json

import pytest

from edgeprune.core.arch import Arch

pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')

MICRO = Arch("et_micro", embed_dim=48, num_heads=3, img_size=64, num_classes=10)


@pytest.fixture
def micro(builtin_arch):
    return builtin_arch(MICRO)


def test_profile_predict_budget_validate_on_executorch(cli, micro, tmp_path):
    from edgeprune.latency.model import load_model
    from edgeprune.latency.table import load

    p = tmp_path / "p.json"
    code, out, err = cli(
        "profile", "--device", "cpu-xnnpack", "--arch", micro, "--method", "dynamicvit",
        "--grid", "1,17", "--runs", "3", "--check-points", "0", "--chain", "1",
        "--no-halves", "--no-e2e", "--threads", "1", "--no-plot", "--out", p,
    )  # fmt: skip
    assert code == 0, err
    t = load(p)
    assert t.measured and t.device["name"] == "cpu-xnnpack"
    assert t.device["runtime"] == "executorch" and t.device["threads"] == 1
    assert t.device["runtime_version"].startswith("1.")
    assert "exported to executorch" in t.extra["pieces"]
    assert t.block.tokens == (1, 17) and min(t.block.median_ms) > 0
    assert "dynamicvit" in t.selectors and t.embed.median_ms > 0 and t.head.median_ms > 0

    code, out, err = cli("predict", f"{micro}:dynamicvit@0.5", "--profile", p, "--json")
    assert code == 0, err
    pred = json.loads(out)["predicted_ms"]
    code, out, _ = cli("predict", micro, "--profile", p, "--json")
    dense = json.loads(out)["predicted_ms"]
    assert pred > 0 and dense > 0  # (which is faster on a 17-token micro DeiT is no test)

    b = tmp_path / "b.json"
    target = round(1.5 * max(pred, dense), 4)
    code, out, err = cli(  # a 3-run table may be noisier than an automatic margin absorbs
        "budget", "--profile", p, "--target-ms", target, "--out", b, "--no-plot", "--json",
        "--margin", "5%",
    )  # fmt: skip
    assert code == 0, err
    d = json.loads(out)
    assert d["predicted_ms"] <= target and d["method"] in ("dense", "dynamicvit")

    # validate-profile (and budget --verify) measure with the table's runtime, here:
    # whole models exported to .pte (parity-checked) and timed interleaved in ExecuTorch.
    # Two 2-block models stand in for the micro DeiT's 12 blocks (lowering time).
    from edgeprune.profiling.validate import check_local_runtime, time_sources
    from tests.test_executorch import TINY2, tiny_source

    assert check_local_runtime(load_model(p), "validate-profile") == "executorch"
    srcs = [tiny_source("dense", arch=TINY2), tiny_source("dynamicvit", (1,), (0.5,), TINY2)]
    timings = time_sources(srcs, "executorch", 1, 1, rounds=3, burst=2)
    assert len(timings) == 2 and all(tm.median_ms > 0 and tm.runs >= 3 for tm in timings)


@pytest.fixture(scope="module")
def micro_pte(tmp_path_factory):
    from edgeprune.export.executorch.target import export_executorch
    from tests.test_executorch import TINY2, tiny_source

    pte = tmp_path_factory.mktemp("pte") / "m.pte"
    export_executorch(tiny_source("dynamicvit", (1,), (0.5,), TINY2), pte, n_parity_inputs=1)
    return pte


def test_bench_pte_here_picks_executorch(cli, micro_pte):
    code, out, err = cli("bench", micro_pte, "--runs", "5", "--threads", "1", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["device"] == "cpu-xnnpack" and d["runtime"] == "executorch"
    assert d["runs"] == 5 and d["threads"] == 1 and d["median_ms"] > 0
    # an ONNX-only device refuses the program in one line
    code, _, err = cli("bench", micro_pte, "--device", "cpu", "--runs", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_bench_pte_over_adb_stand_in(cli, micro_pte, tmp_path, monkeypatch):
    """The android-arm64 descriptor (adb + executor_runner), with the STAND-IN adb and
    executor_runner of test_adb.py: the plumbing, not a phone."""
    import os

    from tests.test_adb import STAND_IN_ADB, STAND_IN_RUNNER, _script

    root = tmp_path / "device"
    (root / "data/local/tmp").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "adb", STAND_IN_ADB)
    _script(root / "data/local/tmp/executor_runner", STAND_IN_RUNNER)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_ROOT", str(root))
    monkeypatch.setenv("STANDIN_DEVICES", "SER1:device,SER2:device")
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)

    code, _, err = cli("bench", micro_pte, "--device", "android-arm64", "--runs", "3")
    assert code == 2 and "2 Android devices are attached" in err
    code, out, err = cli("bench", micro_pte, "--device", "android-arm64", "--runs", "3",
                         "--serial", "SER2", "--json")  # fmt: skip
    assert code == 0, err
    d = json.loads(out)
    assert d["device"] == "android-arm64" and d["runs"] == 3 and d["threads"] == 4
    assert d["extra"]["where"] == "adb device SER2"
    log = (root / "adb.log").read_text()
    assert "-s SER2 push" in log and "--cpu_threads=4" in log
    assert [q.name for q in (root / "data/local/tmp").iterdir()] == ["executor_runner"]
