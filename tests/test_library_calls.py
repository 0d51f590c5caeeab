"""The library functions the thin CLI calls, called directly: profile orchestration
(naming, resume file, dispatch, summary), bench dispatch, calibration inputs and
budget resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeprune.core.errors import EdgepruneError
from edgeprune.profiles.devices import get_device


def test_profile_job_names_validates_and_resumes(tmp_path):
    from edgeprune.profiling.measure import ProfileJob

    job = ProfileJob(device=get_device("cpu"), arch="deit_tiny", method="DynamicViT")
    req = job.request()
    assert req.method == "dynamicvit" and req.arch.name == "deit_tiny"
    assert str(job.destination(req)) == "profile_cpu_deit_tiny_dynamicvit.json"
    assert job.resume_file() is None
    job = ProfileJob(
        device=get_device("cpu"), arch="deit_tiny", out=tmp_path / "t.json", resume=True
    )
    assert job.resume_file() == tmp_path / "t.json.partial.json"
    for bad, msg in (({"batch": 0}, "--batch 0"), ({"threads": 0}, "--threads 0"),
                     ({"runs": 0}, "--runs 0"), ({"grid": "x"}, "--grid")):  # fmt: skip
        with pytest.raises(EdgepruneError, match=msg):
            ProfileJob(device=get_device("cpu"), arch="deit_tiny", **bad).request()


def test_resume_is_refused_through_a_transport():
    from edgeprune.profiling.measure import ProfileJob, sweep_on_device

    dev = get_device("cpu").at_host("nobody@example.invalid")
    req = ProfileJob(device=dev, arch="deit_tiny").request()
    with pytest.raises(EdgepruneError, match="--resume is not supported over ssh"):
        sweep_on_device(req, resume=Path("r.json"))


def test_profile_device_writes_table_and_drops_resume_file(tmp_path):
    from edgeprune.latency.table import load
    from edgeprune.profiling.measure import ProfileJob, profile_device, summary

    out = tmp_path / "t.json"
    job = ProfileJob(
        device=get_device("cpu"), arch="deit_tiny", method=None, threads=1, batch=1, out=out,
        runs=2, grid="1,197", check_points=0, chain=1, halves=False, e2e=False, plot=False,
        force=False, resume=True,
    )  # fmt: skip
    steps = []
    res = profile_device(job, lambda d, i, n: steps.append((d, i, n)))
    assert res.path == out and res.plot is None and out.exists()
    assert not (tmp_path / "t.json.partial.json").exists()
    assert load(out).block.tokens == (1, 197) and steps[-1][0] == "done"
    s = summary(res.table)
    assert s["tokens"] == 197 and s["block_ms"] == pytest.approx(res.table.block.at(197))
    assert "e2e" not in s and "interp_max_rel_err" not in s
    with pytest.raises(EdgepruneError, match="already exists"):
        profile_device(job)


def test_bench_dispatch_here(tmp_path):
    from edgeprune.core.arch import get_arch
    from edgeprune.profiling.bench import bench
    from edgeprune.profiling.pieces import make_block, module_to_onnx

    onnx = tmp_path / "b.onnx"
    onnx.write_bytes(module_to_onnx(make_block(get_arch("deit_tiny")), (1, 8, 192)))
    t = bench(onnx, get_device("cpu"), threads=1, runs=3)
    assert t.runs == 3 and t.runtime == "onnxruntime" and t.threads == 1
    with pytest.raises(EdgepruneError, match="--threads 0"):
        bench(onnx, get_device("cpu"), threads=0)
    with pytest.raises(EdgepruneError, match="does not exist"):
        bench(tmp_path / "none.onnx", get_device("cpu"))


def test_calibration_inputs_and_calibrate_source(tmp_path):
    from edgeprune.core.arch import get_arch
    from edgeprune.core.methods.avit_calibration import calibrate_source, calibration_inputs

    a = get_arch("deit_tiny")
    x = calibration_inputs(a, None, 3)
    assert x.shape == (3, 3, 224, 224) and torch.equal(x, calibration_inputs(a, None, 3))
    with pytest.raises(EdgepruneError, match="exactly one"):
        calibration_inputs(a, None, None)
    with pytest.raises(EdgepruneError, match="at least 1"):
        calibration_inputs(a, None, 0)
    with pytest.raises(EdgepruneError, match="not a folder"):
        calibration_inputs(a, tmp_path / "none", None)
    out = tmp_path / "c.json"
    source, data = calibrate_source("deit_tiny", out, random=2, gate_center=20.0)
    assert source.method.name == "avit" and json.loads(out.read_text()) == data
    assert data["gate_center"] == 20.0 and data["gate_scale"] == 10.0  # released default
    assert len(data["counts"]) == 12 and data["source"] == "deit_tiny"


def test_resolve_with_budget(tmp_path):
    from edgeprune.budget.file import resolve_with_budget
    from edgeprune.budget.run import BudgetRequest, make_budget
    from tests.profile_helper import synthetic_table

    table = tmp_path / "t.json"
    synthetic_table().save(table)
    req = BudgetRequest(profile=table, target_ms=10.0, out=tmp_path / "b.json", no_plot=True)
    run = make_budget(req)
    assert run.result.status == "ok" and run.data["predicted_ms"] <= 10.0
    assert run.plot is None and (tmp_path / "b.json").exists()
    src = resolve_with_budget("deit_tiny", run.path)
    assert src.method.name == "dynamicvit"
    assert src.config.keep_ratios == tuple(run.data["keep_ratios"])
    with pytest.raises(EdgepruneError, match="--budget sets the keep ratios"):
        resolve_with_budget("deit_tiny", run.path, keep="0.5,0.4,0.3")
    with pytest.raises(EdgepruneError, match="contradicts"):
        resolve_with_budget("deit_tiny", run.path, method="evit")
    with pytest.raises(EdgepruneError, match="is for deit_tiny"):
        resolve_with_budget("deit_small", run.path)
