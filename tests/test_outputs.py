"""Outputs never collide (issue 33, item 3): all outputs of one command are checked
together, against each other and against the command's inputs, before any work; side
files (the plot beside a table) follow --force like the main output; an interrupted
writer leaves nothing behind, folders included."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

import edgeprune.core.images as images
import edgeprune.profiling.measure as measure
import edgeprune.profiling.validate as validate
from edgeprune.core.atomic import Output, check_outputs
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import scan, write_demo_dataset, write_demo_images
from edgeprune.profiling.validate import ConfigResult, ValidationReport
from tests.conftest import make_state_dict
from tests.profile_helper import synthetic_table

TARGET = "10"  # ms; the synthetic table's dense model predicts 15.06 ms


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(d.rglob("*"))
    }


def _refused(res, *needles: str) -> str:
    code, _out, err = res
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def table(tmp_path) -> Path:
    p = tmp_path / "t.json"
    synthetic_table().save(p)
    return p


# ---- the helper ------------------------------------------------------------------------
def test_check_outputs_same_file_by_path_link_and_inode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.json").write_text("{}")
    os.symlink(tmp_path / "in.json", tmp_path / "sym.json")
    os.link(tmp_path / "in.json", tmp_path / "hard.json")
    (tmp_path / "sub").mkdir()
    for out in ("in.json", tmp_path / "in.json", "sub/../in.json", "sym.json", "hard.json"):
        with pytest.raises(EdgepruneError, match="is the input --table"):
            check_outputs({"--out": Path(out)}, {"--table": Path("in.json")}, force=True)
    # two outputs, one file under two spellings
    with pytest.raises(EdgepruneError, match="--out and --plot are the same file"):
        check_outputs({"--out": Path("b.png"), "--plot": tmp_path / "sub" / ".." / "b.png"})
    # a folder output that holds an input would take it away when replaced
    (tmp_path / "sub" / "ckpt.pth").write_bytes(b"x")
    with pytest.raises(EdgepruneError, match="holds the input SRC"):
        check_outputs({"--out": Output(Path("sub"), folder=True)}, {"SRC": "sub/ckpt.pth"}, True)
    # none of these is refused: distinct outputs, a built-in SRC, None skipped
    check_outputs(
        {"--out": Output(Path("a.json"), ".json"), "--plot": None, "x": Path("a.JSON.png")},
        {"SRC": "deit_tiny:dynamicvit@0.7", "--budget": None},
    )


def test_check_outputs_suffix_before_existence(tmp_path):
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(EdgepruneError, match="--plot .*b.json should end in .png"):
        check_outputs({"--plot": Output(tmp_path / "b.json", ".png")})
    check_outputs({"--plot": Output(tmp_path / "B.PNG", ".png")})  # any case
    with pytest.raises(EdgepruneError, match="already exists"):
        check_outputs({"--out": Output(tmp_path / "b.json", ".json")})


# ---- budget ----------------------------------------------------------------------------
def test_budget_out_and_plot_the_same_file_is_refused(cli, table, tmp_path):
    b = tmp_path / "b.json"
    os.symlink(b, tmp_path / "p.png")  # a plot's name for the budget file, not written yet
    before = _snapshot(tmp_path)
    _refused(cli("budget", "--table", table, "--target-ms", TARGET, "--out", b, "--plot", b),
             "should end in .png")  # fmt: skip
    _refused(cli("budget", "--table", table, "--target-ms", TARGET, "--out", b,
                 "--plot", tmp_path / "p.png"), "--out and --plot are the same file")  # fmt: skip
    assert _snapshot(tmp_path) == before and not b.exists()


def test_budget_out_over_its_own_table_is_refused_even_with_force(cli, table, tmp_path):
    before = _snapshot(tmp_path)
    line = _refused(
        cli("budget", "--table", table, "--target-ms", TARGET, "--out", table, "--force"),
        "is the input --table",
    )
    assert str(table) in line
    # the plot onto the table through another name (a hard link)
    os.link(table, tmp_path / "alias.png")
    before = _snapshot(tmp_path)
    _refused(cli("budget", "--table", table, "--target-ms", TARGET, "--out", tmp_path / "b.json",
                 "--plot", tmp_path / "alias.png", "--force"), "is the input --table")  # fmt: skip
    assert _snapshot(tmp_path) == before


def test_budget_table_with_a_wrong_suffix_is_refused(cli, table, tmp_path):
    before = _snapshot(tmp_path)
    _refused(cli("budget", "--table", table, "--target-ms", TARGET, "--out", tmp_path / "b.png"),
             "--out", "should end in .json")  # fmt: skip
    assert _snapshot(tmp_path) == before


# ---- profile ---------------------------------------------------------------------------
@pytest.fixture
def fake_sweep(monkeypatch):
    """The sweep answers the synthetic table at once (what is checked is the writing)."""
    calls = []

    def sweep(req, *a, **k):
        calls.append(req)
        return synthetic_table()

    monkeypatch.setattr(measure, "sweep_on_device", sweep)
    return calls


def test_profile_out_png_is_refused_before_measuring(cli, fake_sweep, tmp_path):
    _refused(cli("profile", "--device", "cpu", "--arch", "deit_tiny", "--out", tmp_path / "t.png"),
             "should end in .json")  # fmt: skip
    assert fake_sweep == [] and list(tmp_path.iterdir()) == []


def test_profile_plot_beside_the_table_follows_force(cli, fake_sweep, tmp_path):
    png = tmp_path / "t.png"
    png.write_bytes(b"someone's picture")
    args = ("profile", "--device", "cpu", "--arch", "deit_tiny", "--out", tmp_path / "t.json")
    _refused(cli(*args), str(png), "--force")
    assert fake_sweep == [] and png.read_bytes() == b"someone's picture"
    assert not (tmp_path / "t.json").exists()
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "t.json").exists()


# ---- validate --------------------------------------------------------------------------
@pytest.fixture
def fake_validation(monkeypatch):
    """validate_profile answers a canned report (what is checked is the writing)."""
    calls = []

    def report(model, **_):
        calls.append(model)
        results = tuple(
            ConfigResult(
                keep_ratios=(0.5, 0.25, 0.125),
                predicted_ms=10.0,
                measured_ms=m,
                measured_p90_ms=m * 1.1,
            )  # fmt: skip
            for m in (10.2, 9.9, 10.1)
        )
        return ValidationReport(profile="t.json", method="dynamicvit", threads=1, rounds=3,
                                results=results)  # fmt: skip

    monkeypatch.setattr(validate, "validate_profile", report)
    return calls


def test_validate_plot_onto_its_table_is_refused(cli, table, tmp_path, fake_validation):
    before = _snapshot(tmp_path)
    _refused(cli("validate", table, "--plot", table), "should end in .png")
    os.link(table, tmp_path / "t.png")  # the same file under a plot's name
    before = _snapshot(tmp_path)
    _refused(cli("validate", table, "--plot", tmp_path / "t.png", "--force"), "is the input")
    assert fake_validation == [] and _snapshot(tmp_path) == before


def test_validate_default_plot_lands_beside_the_table(cli, table, tmp_path, fake_validation,
                                                      monkeypatch):  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli("validate", table)
    assert code == 0, err
    plot = tmp_path / "t.validate.png"
    assert plot.read_bytes()[:4] == b"\x89PNG" and list(elsewhere.iterdir()) == []
    # an existing plot is replaced only with --force
    plot.write_bytes(b"kept")
    _refused(cli("validate", table), "--force")
    assert plot.read_bytes() == b"kept"
    assert cli("validate", table, "--force")[0] == 0 and plot.read_bytes()[:4] == b"\x89PNG"


# ---- outputs against inputs elsewhere ---------------------------------------------------
def test_finetune_over_its_own_checkpoint_is_refused_before_training(cli, tmp_path, table):
    ckpt = tmp_path / "ck.pth"
    torch.save({"model": make_state_dict("deit_tiny:dynamicvit@0.7")}, ckpt)
    write_demo_dataset(tmp_path / "data", classes=2, per_class=1, val_per_class=1, size=16)
    before = _snapshot(tmp_path)
    _refused(cli("finetune", ckpt, "--data", tmp_path / "data", "--table", table,
                 "--target-ms", TARGET, "--epochs", "1", "--batch", "2", "--out", ckpt,
                 "--force"), "is the input SRC")  # fmt: skip
    assert _snapshot(tmp_path) == before


def test_calibrate_and_sensitivity_outputs_are_json(cli, tmp_path):
    write_demo_images(tmp_path / "imgs", classes=2, per_class=1, size=16)
    before = _snapshot(tmp_path)
    _refused(cli("calibrate", "deit_tiny:avit", "--random", "2", "--out", tmp_path / "c.png"),
             "should end in .json")  # fmt: skip
    _refused(cli("sensitivity", "deit_tiny:dynamicvit", "--images", tmp_path / "imgs",
                 "--out", tmp_path / "s.txt"), "should end in .json")  # fmt: skip
    assert _snapshot(tmp_path) == before


def test_export_over_an_input_is_refused(cli, tmp_path, table):
    budget = tmp_path / "b.onnx"  # a budget file under an artifact's name
    code, _, err = cli("budget", "--table", table, "--target-ms", TARGET, "--out",
                       tmp_path / "b.json", "--no-plot")  # fmt: skip
    assert code == 0, err
    (tmp_path / "b.json").rename(budget)
    before = _snapshot(tmp_path)
    _refused(cli("export", "deit_tiny", "--budget", budget, "--out", budget, "--force"),
             "is the input --budget")  # fmt: skip
    assert _snapshot(tmp_path) == before


# ---- demo-images: whole or nothing ----------------------------------------------------
def test_interrupted_demo_images_leave_nothing(tmp_path, monkeypatch):
    written = []
    save = images._save_png

    def save_then_interrupt(data, path):
        if len(written) == 5:
            raise KeyboardInterrupt
        save(data, path)
        written.append(path)

    monkeypatch.setattr(images, "_save_png", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_demo_images(tmp_path / "d", classes=3, per_class=4, size=16)
    assert len(written) == 5 and list(tmp_path.iterdir()) == []  # no folder, no temporary


def test_interrupted_demo_images_cli_says_nothing_was_written(cli, tmp_path, monkeypatch):
    def interrupt(data, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "_save_png", interrupt)
    (tmp_path / "d").mkdir()  # an empty folder given is left as it was
    code, _, err = cli("demo-images", tmp_path / "d", "--size", "16")
    assert code == 130 and "nothing was written" in err
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and list((tmp_path / "d").iterdir()) == []


def test_demo_images_into_an_empty_folder_and_bounds(tmp_path):
    (tmp_path / "d").mkdir()
    imgs = write_demo_images(tmp_path / "d", classes=2, per_class=2, size=16)
    assert len(imgs.files) == 4 and [p.name for p in tmp_path.iterdir()] == ["d"]
    assert len(scan(tmp_path / "d").files) == 4
    (tmp_path / "f").write_text("a file")
    for kw, needle in (
        ({"size": 100_000}, "size"),
        ({"size": 4}, "size"),
        ({"classes": 1000, "per_class": 10**9}, "more than"),
        ({"classes": 0}, "classes"),
    ):
        with pytest.raises(EdgepruneError, match=needle):
            write_demo_images(tmp_path / "new", **kw)
    with pytest.raises(EdgepruneError, match="not a folder"):
        write_demo_images(tmp_path / "f", classes=1, per_class=1, size=8)
    assert (tmp_path / "f").read_text() == "a file" and not (tmp_path / "new").exists()


def test_a_resume_file_is_checked_against_inputs_but_may_exist(tmp_path):
    """<out>.partial.json (--resume) joins the collision check: it is refused when it is
    an input or another output, and its existing is no conflict (a rerun continues it)."""
    out, partial = tmp_path / "s.json", tmp_path / "s.json.partial.json"
    partial.write_text("{}")
    outs = {
        "--out": Output(out, ".json"),
        "the resume file": Output(partial, ".json", resumed=True),
    }
    check_outputs(outs, {"SRC": tmp_path / "ck.pt"})  # exists, not forced: fine
    with pytest.raises(EdgepruneError, match="the resume file .* is the input SRC"):
        check_outputs(outs, {"SRC": partial})
    with pytest.raises(EdgepruneError, match="are the same file"):
        check_outputs({**outs, "--plot": partial})


def test_sensitivity_resume_file_over_its_checkpoint_is_refused(cli, tmp_path):
    write_demo_images(tmp_path / "imgs", classes=2, per_class=1, size=16)
    ckpt = tmp_path / "s.json.partial.json"  # a checkpoint under the resume file's name
    torch.save(make_state_dict("deit_tiny:dynamicvit"), ckpt)
    before = _snapshot(tmp_path)
    _refused(cli("sensitivity", ckpt, "--method", "dynamicvit",
                 "--images", tmp_path / "imgs", "--out", tmp_path / "s.json", "--resume"),
             "the resume file", "is the input SRC")  # fmt: skip
    assert _snapshot(tmp_path) == before
