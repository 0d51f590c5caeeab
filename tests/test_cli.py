import json
import pickle

import pytest
import torch

from tests.conftest import make_state_dict


def test_inspect_json(cli):
    code, out, _ = cli("inspect", "deit_small:dynamicvit@0.7", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["method"] == "dynamicvit" and d["arch"] == "deit_small"
    assert d["prune_locs"] == [3, 6, 9] and d["keep_ratios"] == [0.7, 0.49, 0.343]
    assert d["tokens_per_block"][-1] == 68
    assert set(d["gflops"]) >= {"dense", "pruned"} and d["random_weights"] is True


def test_inspect_table_says_random_weights(cli):
    code, out, err = cli("inspect", "deit_tiny:dynamicvit@0.7")
    assert code == 0 and "random" in err and "138" in out


def test_export_cli_writes_model_and_manifest(cli, tmp_path, write_ckpt):
    ck = write_ckpt({"model": make_state_dict("deit_tiny:dynamicvit@0.7")})
    out = tmp_path / "o.onnx"
    code, stdout, _ = cli("export", ck, "--target", "onnx", "--out", out)
    assert code == 0, stdout
    assert out.exists() and (tmp_path / "o.onnx.manifest.json").exists()
    assert "parity" in stdout
    # refuses to overwrite without --force, keeps the old file
    before = out.read_bytes()
    code, _, err = cli("export", ck, "--out", out)
    assert code == 2 and "--force" in err
    assert out.read_bytes() == before


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _bad_inputs(tmp_path):
    d = tmp_path
    (d / "empty.pth").write_bytes(b"")
    (d / "random.pth").write_bytes(bytes(range(256)) * 10)
    good = d / "good.pth"
    torch.save({"model": make_state_dict("deit_tiny:dynamicvit@0.7")}, good)
    (d / "trunc.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with open(d / "evil.pth", "wb") as f:
        pickle.dump({"model": Evil(str(d / "PWNED"))}, f)
    sd = make_state_dict("deit_tiny")
    torch.save({"encoder.weight": torch.zeros(3)}, d / "layout.pth")
    wrong = dict(sd)
    wrong["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 192)
    torch.save(wrong, d / "shape.pth")
    missing = {k: v for k, v in sd.items() if not k.startswith("blocks.3.mlp")}
    torch.save(missing, d / "missing.pth")
    return {
        "missing file": (["inspect", d / "nope.pth"], "does not exist"),
        "empty": (["inspect", d / "empty.pth"], "empty"),
        "random bytes": (["inspect", d / "random.pth"], "not a readable"),
        "truncated": (["export", d / "trunc.pth", "--out", d / "t.onnx"], "not a readable"),
        "code pickle": (["inspect", d / "evil.pth"], "refused"),
        "unknown layout": (["inspect", d / "layout.pth"], "unknown key layout"),
        "wrong shape": (["export", d / "shape.pth", "--out", d / "s.onnx"], "wrong shape"),
        "missing keys": (["inspect", d / "missing.pth"], "missing"),
        "bad ratio": (["inspect", "deit_small:dynamicvit", "--keep", "0.5,1.2,0.1"], "outside"),
        "bad locs": (["inspect", "deit_small:dynamicvit", "--locs", "3,6,20"], "outside the model"),
        "unwritable out": (
            ["export", "deit_tiny", "--out", d / "no" / "such" / "m.onnx"],
            "does not exist",
        ),
        "batch 0": (["export", "deit_tiny", "--batch", "0", "--out", d / "b.onnx"], "batch"),
        "unknown target": (
            ["export", "deit_tiny", "--target", "tflite", "--out", d / "x.onnx"],
            "unknown target",
        ),
    }


def test_bad_inputs_one_line_exit_2_nothing_written(cli, tmp_path):
    cases = _bad_inputs(tmp_path)
    before = set(tmp_path.rglob("*"))
    for name, (args, needle) in cases.items():
        code, out, err = cli(*args)
        assert code == 2, (name, code, err)
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
        assert needle in lines[0], (name, lines[0])
        assert "Traceback" not in err
    assert not (tmp_path / "PWNED").exists()
    assert set(tmp_path.rglob("*")) == before


def test_debug_shows_traceback(tmp_path):
    from edgeprune.cli.app import main
    from edgeprune.core.errors import EdgepruneError

    with pytest.raises(EdgepruneError):
        main(["--debug", "inspect", str(tmp_path / "nope.pth")])


def test_console_script_help_runs():
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "edgeprune", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "inspect" in r.stdout and "export" in r.stdout


def test_help_texts_print_their_brackets():
    """typer renders help as rich markup; "[...]" in a help text must not be eaten as a tag."""
    import os
    import subprocess
    import sys

    def helptext(cmd: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "edgeprune", cmd, "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "250"},
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "ARCH[:METHOD[@RATIO]]" in helptext("predict")
    assert "geometric ([r, r², r³])" in helptext("budget")


def test_export_help_names_every_registered_target(cli):
    from edgeprune.export.targets import load_targets

    code, out, _ = cli("export", "--help")
    targets = load_targets()
    assert code == 0 and len(targets) >= 5
    for name in targets:
        assert name in out, name
