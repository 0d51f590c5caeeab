"""edgeprune sensitivity: per-stage curves in the file budget --sensitivity reads, the
metric named (top-1 with labels, agreement with dense without), resume after an
interruption, and budget's accuracy-vs-latency Pareto plot."""

import json
import shutil

import pytest

from edgeprune.accuracy.sensitivity import SensitivityRequest, measure
from edgeprune.budget.search import load_sensitivity, stage_schedule
from edgeprune.core.images import write_demo_images
from tests.accuracy_helper import HEADS, LOCS, write_dynamicvit, write_profile

GRID = (0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("sens")
    write_dynamicvit(d / "dyvit.pth")
    write_demo_images(d / "imgs", classes=4, per_class=3, size=36)
    flat = d / "flat"
    flat.mkdir()
    for p in sorted((d / "imgs").rglob("*.png"))[:6]:
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    write_profile(d / "profile.json")
    return d


def _req(d, images="imgs", **kw):
    return SensitivityRequest(
        src=str(d / "dyvit.pth"), images=d / images, grid=GRID, heads=HEADS, locs=LOCS, batch=4,
        threads=1, **kw,
    )  # fmt: skip


def test_schedules_keep_the_other_stages_whole():
    assert stage_schedule(3, 1, 0.4, cumulative=True) == (1.0, 0.4, 0.4)
    assert stage_schedule(3, 1, 0.4, cumulative=False) == (1.0, 0.4, 1.0)


def test_unlabelled_measures_agreement_with_dense_and_budget_reads_it(setup, tmp_path):
    d = setup
    data = measure(_req(d, "flat"))
    assert data["metric"] == "agreement_with_dense" and data["dense"] == 100.0
    assert "agreement" in data["metric_description"]
    assert set(data["stages"]) == {"1", "2", "3"}
    for st in data["stages"].values():
        assert st["keep_ratios"] == list(GRID)
        # at 1.0 the stage keeps every token: the same answers as the dense backbone
        assert st["accuracy"][-1] == 100.0 and st["kl_to_dense"][-1] < 1e-9
        assert st["accuracy"] == st["agreement_with_dense"]
    # stage 1 at 0.25 keeps 4 of 16 patches for 3 blocks: it must change the logits
    assert data["stages"]["1"]["kl_to_dense"][0] > 1e-6
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    sens = load_sensitivity(path)
    assert sens.metric == "agreement_with_dense" and sorted(sens.stages) == list(LOCS)
    assert sens.predict(LOCS, (1.0, 1.0, 1.0)) == 100.0


def test_labelled_measures_top1(setup):
    data = measure(_req(setup, limit=8))
    assert data["metric"] == "top1" and data["images"]["images"] == 8
    assert data["images"]["labelled"] and 0.0 <= data["dense"] <= 100.0
    for st in data["stages"].values():  # at 1.0 the top-1 is the dense model's
        assert st["accuracy"][-1] == data["dense"]


def test_resume_reuses_the_points_measured_before_an_interruption(setup, tmp_path):
    d = setup
    partial = tmp_path / "s.json.partial.json"
    seen = []

    def stop_after_four(desc, i, n):
        seen.append(desc)
        if i == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure(_req(d, "flat"), partial, stop_after_four)
    saved = json.loads(partial.read_text())
    assert len(saved["points"]) == 4
    # a different request is refused, not mixed in
    with pytest.raises(Exception, match="different request"):
        measure(
            SensitivityRequest(
                src=str(d / "dyvit.pth"),
                images=d / "flat",
                grid=(0.5, 1.0),
                heads=HEADS,
                locs=LOCS,
            ),
            partial,
        )
    import edgeprune.accuracy.sensitivity as s

    calls = []
    real = s.schedule_model

    def counting(source, keep):
        calls.append(keep)
        return real(source, keep)

    s.schedule_model = counting
    try:
        data = measure(_req(d, "flat"), partial)
    finally:
        s.schedule_model = real
    assert len(calls) == 9 - 4  # only the missing points were measured
    assert not partial.exists()
    fresh = measure(_req(d, "flat"))
    assert data["stages"] == fresh["stages"]


def test_budget_with_sensitivity_draws_the_pareto_png(cli, setup, tmp_path):
    d = setup
    code, out, err = cli(
        "sensitivity",
        d / "dyvit.pth",
        "--images",
        d / "flat",
        "--heads",
        "2",
        "--locs",
        "1,2,3",
        "--grid",
        "0.25,0.5,0.75,1",
        "--threads",
        "1",
        "--out",
        tmp_path / "s.json",
    )
    assert code == 0, err
    assert "agreement" in out
    png = tmp_path / "b.pareto.png"
    code, out, err = cli(
        "budget",
        "--profile",
        d / "profile.json",
        "--target-ms",
        "3.2",
        "--locs",
        "1,2,3",
        "--sensitivity",
        tmp_path / "s.json",
        "--schedule",
        "free",
        "--out",
        tmp_path / "b.json",
        "--plot",
        png,
    )
    assert code == 0, err
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["objective"] == "predicted agreement_with_dense" and b["predicted_ms"] <= 3.2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "chosen" in out and "predicted agreement_with_dense" in out
