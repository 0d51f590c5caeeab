"""predict / budget / validate-profile / --budget on a REAL table measured here
(quick onnxruntime sweep of deit_tiny, 1 thread), and their bad inputs."""

from __future__ import annotations

import json

import pytest

from edgeprune.latency import load_model
from edgeprune.loss import LatencyAwareSparsityLoss
from edgeprune.source import resolve
from tests.profile_helper import measure_table


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    p = tmp_path_factory.mktemp("prof") / "cpu_deit_tiny.json"
    measure_table(
        "deit_tiny",
        "dynamicvit",
        block_tokens=(1, 50, 100, 150, 197),
        rounds=8,
    ).save(p)
    return p


def test_measured_table_is_valid_and_marked_measured(profile):
    m = load_model(profile)
    assert m.table.measured is True and m.table.arch.name == "deit_tiny"
    assert "dynamicvit" in m.table.selectors


def test_predict_json_matches_library(cli, profile):
    code, out, _ = cli("predict", "deit_tiny:dynamicvit@0.7", "--profile", profile, "--json")
    assert code == 0
    d = json.loads(out)
    lib = load_model(profile).predict(resolve("deit_tiny:dynamicvit@0.7").plan)
    assert abs(d["predicted_ms"] - lib.total_ms) < 1e-9
    assert len(d["blocks_ms"]) == 12 and d["tokens_per_block"][-1] == 68
    code, out, _ = cli("predict", "deit_tiny:dynamicvit@0.7", "--profile", profile)
    assert code == 0 and "block 11" in out and "total" in out


def test_budget_predict_loss_agree_and_budget_file_drives_export(cli, profile, tmp_path):
    dense = load_model(profile).predict(resolve("deit_tiny").plan).total_ms
    target = round(0.6 * dense, 3)
    b = tmp_path / "b.json"
    code, out, err = cli(
        "budget", "--profile", profile, "--target-ms", target, "--out", b, "--json"
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["predicted_ms"] <= target and d["method"] == "dynamicvit" and d["locs"] == [3, 6, 9]
    assert (tmp_path / "b.pareto.png").stat().st_size > 1000
    saved = json.loads(b.read_text())
    assert saved["keep_ratios"] == d["keep_ratios"] and saved["profile"]["sha256"]
    # predict with --budget gives the same number
    code, out, _ = cli("predict", "deit_tiny", "--profile", profile, "--budget", b, "--json")
    assert code == 0 and abs(json.loads(out)["predicted_ms"] - d["predicted_ms"]) < 1e-6
    # the loss built from the budget file alone agrees too
    import torch

    crit = LatencyAwareSparsityLoss(b)
    assert crit.target_ms == target
    plan = resolve("deit_tiny:dynamicvit", keep=tuple(d["keep_ratios"])).plan
    masks = []
    for s in plan.selectors:
        m = torch.zeros(1, 196)
        m[:, : s.tokens_out - 1] = 1
        masks.append(m)
    assert abs(float(crit.predicted_ms(masks)) - d["predicted_ms"]) < 1e-6
    # inspect --budget sets the schedule
    code, out, _ = cli("inspect", "deit_tiny", "--budget", b, "--json")
    assert code == 0 and json.loads(out)["tokens_per_block"] == d["tokens_per_block"]


def test_budget_fps_dense_and_unreachable(cli, profile, tmp_path):
    code, out, _ = cli(
        "budget", "--profile", profile, "--target-fps", 1, "--out", tmp_path / "d.json"
    )
    assert code == 0 and "already meets" in out
    before = set(tmp_path.iterdir())
    code, _, err = cli(
        "budget", "--profile", profile, "--target-ms", 0.5, "--out", tmp_path / "u.json"
    )
    assert code == 2 and "unreachable" in err and "ms" in err
    assert len(err.strip().splitlines()) == 1
    assert set(tmp_path.iterdir()) == before


def test_validate_profile_tiny(cli, profile, tmp_path):
    png = tmp_path / "v.png"
    code, out, err = cli(
        "validate-profile", profile, "--configs", 2, "--rounds", 5, "--plot", png, "--json"
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["configs"] == 2 and d["median_rel_error"] >= 0 and png.stat().st_size > 1000
    assert all(r["measured_ms"] > 0 for r in d["results"])


def test_bad_inputs_one_line_exit_2_nothing_written(cli, profile, tmp_path):
    d = tmp_path
    (d / "corrupt.json").write_text("{not json")
    good = json.loads(profile.read_text())
    (d / "v9.json").write_text(json.dumps({**good, "version": 9}))
    small = {
        **good,
        "arch": {**good["arch"], "name": "deit_small", "embed_dim": 384, "num_heads": 6},
    }
    (d / "small.json").write_text(json.dumps(small))
    (d / "b1.json").write_text(json.dumps({**good, "batch": 4}))
    out = d / "o.json"
    cases = {
        "target 0": (
            ["budget", "--profile", profile, "--target-ms", "0", "--out", out],
            "positive",
        ),
        "target neg": (
            ["budget", "--profile", profile, "--target-ms=-5", "--out", out],
            "positive",
        ),
        "target nan": (
            ["budget", "--profile", profile, "--target-ms", "nan", "--out", out],
            "positive",
        ),
        "both targets": (
            [
                "budget",
                "--profile",
                profile,
                "--target-ms",
                "5",
                "--target-fps",
                "30",
                "--out",
                out,
            ],
            "exactly one",
        ),
        "corrupt": (
            ["budget", "--profile", d / "corrupt.json", "--target-ms", "5", "--out", out],
            "not JSON",
        ),
        "version": (["predict", "deit_tiny", "--profile", d / "v9.json"], "version 9"),
        "missing profile": (
            ["predict", "deit_tiny", "--profile", d / "nope.json"],
            "does not exist",
        ),
        "wrong arch": (
            ["predict", "deit_tiny:dynamicvit", "--profile", d / "small.json"],
            "is for deit_small, but the model is deit_tiny",
        ),
        "wrong batch": (
            ["predict", "deit_tiny", "--profile", d / "b1.json"],
            "measured at batch 4, but batch 1",
        ),
        "missing budget": (
            ["export", "deit_tiny", "--budget", d / "nob.json", "--out", d / "m.onnx"],
            "does not exist",
        ),
        "budget not json": (["inspect", "deit_tiny", "--budget", d / "corrupt.json"], "not JSON"),
        "bad schedule": (
            ["budget", "--profile", profile, "--target-ms", "5", "--schedule", "x", "--out", out],
            "schedule",
        ),
        "validate configs": (
            ["validate-profile", profile, "--configs", "0", "--plot", d / "v.png"],
            "configs",
        ),
    }
    before = set(d.rglob("*"))
    for name, (args, needle) in cases.items():
        code, _, err = cli(*args)
        assert code == 2, (name, code, err)
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        assert needle in lines[0], (name, lines[0])
    assert set(d.rglob("*")) == before
