"""Interrupted and concurrent work, and outputs that stay bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.core.source import resolve
from edgeprune.export.manifest import sha256_file
from edgeprune.export.onnx import export_onnx
from edgeprune.runtimes.onnxruntime import make_session, run


def _spawn(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "edgeprune", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"process ended early: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} never appeared")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_export_leaves_nothing(tmp_path, sig):
    out = tmp_path / "m.onnx"
    proc = _spawn("export", "deit_small:dynamicvit@0.7", "--out", str(out), cwd=tmp_path)
    _wait_for(tmp_path / ".m.onnx.lock", proc)  # export work has begun
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_concurrent_exports_to_one_output(tmp_path):
    out = tmp_path / "m.onnx"
    args = ("export", "deit_tiny:dynamicvit@0.7", "--out", str(out), "--force")
    procs = [_spawn(*args, cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes[0] == 0, results
    for code, err in results:
        if code:
            lines = [ln for ln in err.splitlines() if not ln.startswith("note:")]
            assert code == 2 and len(lines) == 1 and "another edgeprune process" in lines[0]
    manifest = json.loads((tmp_path / "m.onnx.manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(out)  # one export's model with its own manifest
    make_session(out)  # loads: a whole file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.manifest.json"]


def test_same_input_bit_identical_100_times(tmp_path):
    src = resolve("deit_tiny:dynamicvit@0.7")
    out = tmp_path / "m.onnx"
    export_onnx(src, out, n_parity_inputs=1)  # its parity is tested elsewhere
    sess = make_session(out, threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    first = run(sess, x)
    for _ in range(99):
        assert np.array_equal(run(sess, x), first)
    model = src.model()
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
        for _ in range(20):
            assert torch.equal(model(torch.from_numpy(x)), ref)
