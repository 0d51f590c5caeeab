"""A corpus of bad inputs across every command: each ends with exit code 2 (1 where the
command's own answer is "no", as for `check`), one line on stderr naming the problem,
no traceback, nothing new left behind and nothing previously there changed."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from tests.conftest import make_state_dict


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _training_folders(d: Path) -> None:
    """finetune's folders: ImageNet layout with 2 classes; one with no images, one with
    one class, one with an unreadable file; and a budget made for deit_tiny."""
    from edgeprune.core.images import write_demo_images

    for split in ("train", "val"):
        for top in ("ftdata", "ftbad"):
            (d / top).mkdir(exist_ok=True)
        write_demo_images(d / "ftdata" / split, classes=2, per_class=1, size=16)
        write_demo_images(d / "ftbad" / split, classes=2, per_class=1, size=16)
        (d / "ftempty" / split / "a").mkdir(parents=True)
        (d / "ftone" / split / "a").mkdir(parents=True)
        (d / "ftone" / split / "a" / "x.png").write_bytes(
            (d / "ftdata" / split / "class_000" / "img_000.png").read_bytes()
        )
    (d / "ftbad" / "train" / "class_001" / "img_000.png").write_bytes(b"not a png at all")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "empty.pth").write_bytes(b"")
    (d / "random.pth").write_bytes(bytes(range(256)) * 64)
    good = {"model": make_state_dict("deit_tiny:dynamicvit@0.7")}
    torch.save(good, d / "dyvit.pth")
    raw = (d / "dyvit.pth").read_bytes()
    (d / "trunc.pth").write_bytes(raw[: len(raw) // 3])
    with open(d / "evil.pth", "wb") as f:
        pickle.dump({"model": _Evil(str(d / "PWNED"))}, f)
    sd = make_state_dict("deit_tiny")
    torch.save({"encoder.weight": torch.zeros(3)}, d / "layout.pth")
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.2.")}, d / "missing.pth")
    torch.save({**sd, "blocks.0.extra.weight": torch.zeros(3)}, d / "extra.pth")
    torch.save({**sd, "blocks.1.mlp.fc2.weight": torch.zeros(192, 10)}, d / "shape.pth")
    nan = dict(sd)
    nan["blocks.0.attn.qkv.weight"] = torch.full_like(sd["blocks.0.attn.qkv.weight"], float("nan"))
    torch.save(nan, d / "nan.pth")
    small = make_state_dict("deit_small")
    torch.save(small, d / "small.pth")
    (d / "existing.onnx").write_bytes(b"previous artifact")
    (d / "bad.onnx").write_bytes(b"not an onnx model")
    # profiles
    tbl = {
        "schema": "edgeprune.profile",
        "version": 1,
        "measured": True,
        "device": {"name": "cpu", "runtime": "onnxruntime", "threads": 1},
        "arch": {"name": "deit_tiny", "embed_dim": 192, "num_heads": 3},
        "method": "dynamicvit",
        "batch": 1,
        "date": "2026-11-21",
        "tables": {
            "block": {"tokens": [1, 100, 197], "median_ms": [0.1, 0.8, 1.5]},
            "embed": {"median_ms": 0.3},
            "head": {"median_ms": 0.02},
            "selectors": {"dynamicvit": {"tokens": [1, 197], "median_ms": [0.01, 0.1]}},
        },
    }
    (d / "profile.json").write_text(json.dumps(tbl))
    (d / "corrupt.json").write_text("{not json")
    (d / "truncated.json").write_text(json.dumps(tbl)[:120])
    (d / "v99.json").write_text(json.dumps({**tbl, "version": 99}))
    budget = {
        "schema": "edgeprune.budget",
        "version": 1,
        "method": "dynamicvit",
        "arch": "deit_tiny",
        "locs": [3, 6, 9],
        "keep_ratios": [0.7, 0.49, 0.343],
        "target_ms": 10.0,
        "predicted_ms": 9.0,
        "reanchor_scale": 0.0,
    }
    (d / "scale0_budget.json").write_text(json.dumps(budget))
    (d / "tiny_budget.json").write_text(json.dumps({**budget, "reanchor_scale": 1.0}))
    from edgeprune.core.images import write_demo_images

    write_demo_images(d / "demo_imgs", classes=2, per_class=1, size=16)
    (d / "tiny.onnx").write_bytes(b"an artifact with no manifest beside it")
    (d / "noimages").mkdir()
    _training_folders(d)
    (d / "noimages" / "readme.txt").write_text("no images here")
    (d / "demo").mkdir()
    (d / "demo" / "keep.txt").write_text("a folder that is not empty")
    (d / "wide_imgs").mkdir()  # a 40000×1 PNG of a few hundred bytes (issue 33)
    from PIL import Image

    Image.new("L", (40000, 1)).save(d / "wide_imgs" / "wide.png")
    (d / "small_profile.json").write_text(
        json.dumps({**tbl, "arch": {"name": "deit_small", "embed_dim": 384, "num_heads": 6}})
    )
    _hostile_artifacts(d)  # issue 33: checkpoints, manifests (tests/test_hostile_artifacts.py)
    return d


P = "{d}"  # placeholder for the corpus folder

CASES: dict[str, tuple[list[str], str, int]] = {
    # checkpoints
    "missing checkpoint": (["inspect", f"{P}/nope.pth"], "does not exist", 2),
    "empty checkpoint": (["inspect", f"{P}/empty.pth"], "empty", 2),
    "random-byte checkpoint": (["inspect", f"{P}/random.pth"], "not a readable", 2),
    "truncated checkpoint": (
        ["export", f"{P}/trunc.pth", "--out", f"{P}/t.onnx"],
        "not a readable",
        2,
    ),
    "code-running pickle": (["export", f"{P}/evil.pth", "--out", f"{P}/e.onnx"], "refused", 2),
    "unknown key layout": (["inspect", f"{P}/layout.pth"], "unknown key layout", 2),
    "missing keys": (["inspect", f"{P}/missing.pth"], "missing", 2),
    "extra keys": (["inspect", f"{P}/extra.pth"], "unexpected", 2),
    "wrong shapes": (["inspect", f"{P}/shape.pth"], "wrong shape", 2),
    "NaN weights": (["export", f"{P}/nan.pth", "--out", f"{P}/n.onnx"], "NaN", 2),
    "dynamicvit ckpt as spvit": (
        ["inspect", f"{P}/dyvit.pth", "--method", "spvit"],
        "dynamicvit",
        2,
    ),
    # ratios and locations
    "ratio 0": (["inspect", "deit_small:dynamicvit", "--keep", "0,0.5,0.2"], "outside", 2),
    "ratio negative": (
        ["inspect", "deit_small:dynamicvit", "--keep", "-0.5,0.4,0.2"],
        "outside",
        2,
    ),
    "ratio > 1": (["inspect", "deit_small:dynamicvit@1.5"], "outside", 2),
    "ratio NaN": (["inspect", "deit_small:dynamicvit", "--keep", "nan,0.5,0.2"], "outside", 2),
    "ratio not a number": (
        ["inspect", "deit_small:dynamicvit", "--keep", "a,b,c"],
        "not a number",
        2,
    ),
    "locs out of range": (["inspect", "deit_small:dynamicvit", "--locs", "3,6,40"], "outside", 2),
    "locs duplicated": (["inspect", "deit_small:dynamicvit", "--locs", "3,3,9"], "duplicated", 2),
    "tome r too large": (["inspect", "deit_small:tome@r200"], "r", 2),
    "option for another method": (
        ["inspect", "deit_small:dynamicvit", "--tome-r", "8"],
        "does not apply",
        2,
    ),
    "missing calibration": (
        ["inspect", "deit_tiny:avit", "--calibration", f"{P}/nope.json"],
        "calibration",
        2,
    ),
    # export
    "batch 0": (["export", "deit_tiny", "--batch", "0", "--out", f"{P}/b.onnx"], "batch", 2),
    "unknown target": (
        ["export", "deit_tiny", "--target", "tflite", "--out", f"{P}/x.onnx"],
        "target",
        2,
    ),
    "unknown method": (["inspect", "deit_tiny:dropit"], "unknown method", 2),
    "unknown arch": (["inspect", "deit_huge"], "unknown arch", 2),
    "missing output dir": (
        ["export", "deit_tiny", "--out", f"{P}/no/such/m.onnx"],
        "does not exist",
        2,
    ),
    "output dir is a file": (
        ["export", "deit_tiny", "--out", f"{P}/existing.onnx/m.onnx"],
        "not a directory",
        2,
    ),
    "existing output": (["export", "deit_tiny", "--out", f"{P}/existing.onnx"], "--force", 2),
    "bad precision for target": (
        [
            "export",
            "deit_tiny",
            "--target",
            "coreml",
            "--precision",
            "int8",
            "--out",
            f"{P}/m.mlpackage",
        ],
        "precision",
        2,
    ),
    "calibration images without --int8": (
        [
            "export",
            "deit_tiny",
            "-t",
            "executorch",
            "--images",
            f"{P}/demo_imgs",
            "-o",
            f"{P}/m.pte",
        ],
        "needs --int8",
        2,
    ),
    "int8 calibration folder missing": (
        [
            "export",
            "deit_tiny",
            "-t",
            "executorch",
            "--int8",
            "--images",
            f"{P}/nope",
            "-o",
            f"{P}/m.pte",
        ],
        "not a folder",
        2,
    ),
    "custom kernels for another target": (
        ["export", "deit_tiny:tome", "-t", "onnx", "--custom-kernels", "-o", f"{P}/m.onnx"],
        "--custom-kernels does not apply",
        2,
    ),
    # devices and profiles
    "unknown device": (
        ["profile", "--device", "toaster", "--arch", "deit_tiny", "--out", f"{P}/p.json"],
        "toaster",
        2,
    ),
    "runtime not installed": (
        ["profile", "--device", "iphone", "--arch", "deit_tiny", "--out", f"{P}/p.json"],
        "macOS",
        2,
    ),
    "corrupt profile": (
        ["predict", "deit_tiny:dynamicvit", "--profile", f"{P}/corrupt.json"],
        "not JSON",
        2,
    ),
    "truncated profile": (
        ["predict", "deit_tiny:dynamicvit", "--profile", f"{P}/truncated.json"],
        "profile",
        2,
    ),
    "wrong-version profile": (
        ["predict", "deit_tiny:dynamicvit", "--profile", f"{P}/v99.json"],
        "version",
        2,
    ),
    "wrong-arch profile": (
        ["predict", "deit_tiny:dynamicvit", "--profile", f"{P}/small_profile.json"],
        "deit_small",
        2,
    ),
    "missing profile": (
        ["budget", "--profile", f"{P}/nope.json", "--target-ms", "10"],
        "does not exist",
        2,
    ),
    # budget targets
    "budget target 0": (
        ["budget", "--profile", f"{P}/profile.json", "--target-ms", "0", "--out", f"{P}/b.json"],
        "target",
        2,
    ),
    "budget target negative": (
        ["budget", "--profile", f"{P}/profile.json", "--target-ms", "-5", "--out", f"{P}/b.json"],
        "target",
        2,
    ),
    "budget target NaN": (
        ["budget", "--profile", f"{P}/profile.json", "--target-ms", "nan", "--out", f"{P}/b.json"],
        "target",
        2,
    ),
    "budget --reanchor with a value": (
        [
            "budget",
            "--profile",
            f"{P}/profile.json",
            "--target-ms",
            "10",
            "--verify",
            "--reanchor=yes",
            "--out",
            f"{P}/b.json",
        ],
        "does not take a value",
        2,
    ),
    "budget file with a zero re-anchoring scale": (
        ["export", "deit_tiny", "--budget", f"{P}/scale0_budget.json", "--out", f"{P}/m.onnx"],
        "reanchor_scale",
        2,
    ),
    "missing budget file": (
        ["export", "deit_tiny", "--budget", f"{P}/nope.json", "--out", f"{P}/m.onnx"],
        "budget",
        2,
    ),
    # bench and check
    "bench corrupt artifact": (["bench", f"{P}/bad.onnx"], "bad.onnx", 2),
    "bench --ops on a phone over adb": (
        ["bench", f"{P}/tiny.onnx", "--ops", "--device", "android-arm64"],
        "--ops cannot profile",
        2,
    ),
    "bench --ops of an ONNX model on the ExecuTorch device": (
        ["bench", f"{P}/tiny.onnx", "--ops", "--device", "cpu-xnnpack"],
        "--ops cannot profile",
        2,
    ),
    "bench --etdump missing": (
        ["bench", f"{P}/tiny.onnx", "--etdump", f"{P}/nope.etdp"],
        "does not exist",
        2,
    ),
    "bench --etdump garbage": (
        ["bench", f"{P}/tiny.onnx", "--etdump", f"{P}/corrupt.json"],
        "not an ETDump",
        2,
    ),
    "bench --trt-profile not a trtexec profile": (
        ["bench", f"{P}/tiny.onnx", "--trt-profile", f"{P}/profile.json"],
        "not a list of layer records",
        2,
    ),
    "bench --ops-out over its artifact": (
        ["bench", f"{P}/tiny.onnx", "--ops-out", f"{P}/tiny.onnx"],
        "should end in .json",
        2,
    ),
    "check corrupt model": (["check", f"{P}/bad.onnx", "--target", "trt"], "bad.onnx", 2),
    "check unknown target": (["check", f"{P}/bad.onnx", "--target", "tpu"], "tpu", 2),
    # accuracy: evaluate, sensitivity, finetune, demo-images (issue 15)
    "evaluate empty folder": (["evaluate", "deit_tiny", "--images", f"{P}/noimages"], "no PNG", 2),
    "evaluate missing folder": (
        ["evaluate", "deit_tiny", "--images", f"{P}/nope"],
        "not a folder",
        2,
    ),
    "evaluate corrupt artifact": (
        ["evaluate", f"{P}/bad.onnx", "--images", f"{P}/demo_imgs", "--reference", "deit_tiny"],
        "bad.onnx",
        2,
    ),
    "evaluate artifact without manifest": (
        ["evaluate", f"{P}/tiny.onnx", "--images", f"{P}/demo_imgs"],
        "--reference",
        2,
    ),
    "evaluate limit 0": (
        ["evaluate", "deit_tiny", "--images", f"{P}/demo_imgs", "--limit", "0"],
        "--limit",
        2,
    ),
    "evaluate bad mean": (
        ["evaluate", "deit_tiny", "--images", f"{P}/demo_imgs", "--mean", "0.5,0.5"],
        "three",
        2,
    ),
    "sensitivity of a dense model": (
        ["sensitivity", "deit_tiny", "--images", f"{P}/demo_imgs", "--out", f"{P}/s.json"],
        "prunes no tokens",
        2,
    ),
    "sensitivity bad grid": (
        [
            "sensitivity",
            "deit_tiny:dynamicvit",
            "--images",
            f"{P}/demo_imgs",
            "--grid",
            "0,0.5",
            "--out",
            f"{P}/s.json",
        ],
        "--grid",
        2,
    ),
    "sensitivity existing output": (
        [
            "sensitivity",
            "deit_tiny:dynamicvit",
            "--images",
            f"{P}/demo_imgs",
            "--out",
            f"{P}/profile.json",
        ],
        "--force",
        2,
    ),
    "budget corrupt sensitivity": (
        [
            "budget",
            "--profile",
            f"{P}/profile.json",
            "--target-ms",
            "10",
            "--sensitivity",
            f"{P}/corrupt.json",
            "--out",
            f"{P}/b.json",
        ],
        "sensitivity",
        2,
    ),
    "finetune without a target": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--out",
            f"{P}/f.pth",
        ],
        "--target-ms",
        2,
    ),
    "finetune missing profile": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/nope.json",
            "--target-ms",
            "5",
            "--out",
            f"{P}/f.pth",
        ],
        "does not exist",
        2,
    ),
    "finetune of another method": (
        [
            "finetune",
            "deit_tiny:evit",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "5",
            "--out",
            f"{P}/f.pth",
        ],
        "evit",
        2,
    ),
    "finetune empty folder": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftempty",
            "--method",
            "dynamicvit",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "50",
            "--out",
            f"{P}/f.pth",
        ],
        "no PNG",
        2,
    ),
    "demo-images into a non-empty folder": (["demo-images", f"{P}/demo"], "not empty", 2),
    # hostile checkpoints, manifests and finetune numbers (issue 33; test_hostile_artifacts)
    "checkpoint: unpickler IndexError": (["inspect", f"{P}/pop.pth"], "not a readable", 2),
    "checkpoint: unpickler KeyError": (["inspect", f"{P}/memo.pth"], "not a readable", 2),
    "checkpoint: storage key not found": (
        ["export", f"{P}/storagekey.pth", "--out", f"{P}/sk.onnx"],
        "not a readable",
        2,
    ),
    "checkpoint: 1-d pos_embed": (["inspect", f"{P}/pos1d.pth"], "pos_embed", 2),
    "checkpoint: integer weights": (["inspect", f"{P}/intw.pth"], "not floating point", 2),
    "checkpoint: a block missing": (["inspect", f"{P}/gap.pth"], "blocks.1", 2),
    "checkpoint: block index not a number": (["inspect", f"{P}/blockx.pth"], "blocks.x", 2),
    "evaluate --reference of another arch": (
        ["evaluate", f"{P}/dt.onnx", "--images", f"{P}/demo_imgs", "--reference", "deit_small"],
        "deit_small",
        2,
    ),
    "manifest with string keep ratios": (
        ["evaluate", f"{P}/km.onnx", "--images", f"{P}/demo_imgs"],
        "keep_ratios",
        2,
    ),
    "manifest with a list for options": (
        ["evaluate", f"{P}/om.onnx", "--images", f"{P}/demo_imgs"],
        "options",
        2,
    ),
    "finetune negative latency weight": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "5",
            "--latency-weight",
            "-10",
            "--out",
            f"{P}/f.pth",
        ],
        "--latency-weight",
        2,
    ),  # fmt: skip
    "finetune NaN latency weight": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "5",
            "--latency-weight",
            "nan",
            "--out",
            f"{P}/f.pth",
        ],
        "--latency-weight",
        2,
    ),  # fmt: skip
    "finetune negative backbone lr scale": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "5",
            "--backbone-lr-scale",
            "-1",
            "--out",
            f"{P}/f.pth",
        ],
        "--backbone-lr-scale",
        2,
    ),  # fmt: skip
    "finetune --device tpu": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "5",
            "--device",
            "tpu",
            "--out",
            f"{P}/f.pth",
        ],
        "tpu",
        2,
    ),  # fmt: skip
    "finetune: a folder of one class": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftone",
            "--table",
            f"{P}/profile.json",
            "--method",
            "dynamicvit",
            "--target-ms",
            "50",
            "--out",
            f"{P}/f.pth",
        ],
        "one class",
        2,
    ),  # fmt: skip
    "finetune: an unreadable image": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftbad",
            "--table",
            f"{P}/profile.json",
            "--method",
            "dynamicvit",
            "--target-ms",
            "50",
            "--batch",
            "2",
            "--out",
            f"{P}/f.pth",
        ],
        "cannot read image",
        2,
    ),  # fmt: skip
    "finetune: a budget for another arch": (
        [
            "finetune",
            "deit_small",
            "--data",
            f"{P}/ftdata",
            "--budget",
            f"{P}/tiny_budget.json",
            "--out",
            f"{P}/f.pth",
        ],
        "deit_tiny",
        2,
    ),  # fmt: skip
    "finetune: an unreachable target": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--method",
            "dynamicvit",
            "--target-ms",
            "0.001",
            "--out",
            f"{P}/f.pth",
        ],
        "no dynamicvit schedule reaches",
        2,
    ),  # fmt: skip
    "finetune: --resume of a checkpoint no run wrote": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--method",
            "dynamicvit",
            "--target-ms",
            "50",
            "--resume",
            f"{P}/dyvit.pth",
            "--out",
            f"{P}/f.pth",
        ],
        "no training state",
        2,
    ),  # fmt: skip
    "finetune: --batch not divisible": (
        [
            "finetune",
            "deit_tiny",
            "--data",
            f"{P}/ftdata",
            "--table",
            f"{P}/profile.json",
            "--method",
            "dynamicvit",
            "--target-ms",
            "50",
            "--epochs",
            "0",
            "--out",
            f"{P}/f.pth",
        ],
        "--epochs",
        2,
    ),  # fmt: skip
    # outputs never collide, images bounded (issue 33)
    "demo-images into a file": (["demo-images", f"{P}/profile.json"], "not a folder", 2),
    "demo-images absurd size": (["demo-images", f"{P}/new", "--size", "100000"], "--size", 2),
    "demo-images absurd count": (
        ["demo-images", f"{P}/new", "--classes", "1000", "--per-class", "100000"],
        "more than",
        2,
    ),
    "budget --out and --plot one file": (
        [
            "budget",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "10",
            "--out",
            f"{P}/b.json",
            "--plot",
            f"{P}/b.json",
        ],
        "should end in .png",
        2,
    ),  # fmt: skip
    "budget --out over its table": (
        [
            "budget",
            "--table",
            f"{P}/profile.json",
            "--target-ms",
            "10",
            "--out",
            f"{P}/profile.json",
            "--force",
        ],
        "is the input --table",
        2,
    ),  # fmt: skip
    "validate --plot over its table": (
        ["validate", f"{P}/profile.json", "--plot", f"{P}/profile.json", "--force"],
        "should end in .png",
        2,
    ),
    "profile --out a plot's name": (
        ["profile", "--device", "cpu", "--arch", "deit_tiny", "--out", f"{P}/t.png"],
        "should end in .json",
        2,
    ),
    "calibrate on a 40000x1 image": (
        ["calibrate", "deit_tiny:avit", "--images", f"{P}/wide_imgs", "--out", f"{P}/c.json"],
        "20:1",
        2,
    ),
}


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(d.rglob("*"))
    }


def test_corpus_size():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, corpus_dir, cli):
    args, needle, want = CASES[name]
    args = [a.replace(P, str(corpus_dir)) for a in args]
    before = _snapshot(corpus_dir)
    code, _out, err = cli(*args)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("note:", "warning:"))]
    assert code == want, (name, code, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), (name, err)
    assert needle.lower() in lines[0].lower(), (name, lines[0])
    assert "Traceback" not in err
    assert _snapshot(corpus_dir) == before, name
    assert not (corpus_dir / "PWNED").exists()


def _hostile_artifacts(d: Path) -> None:
    """Checkpoints that crashed the unpickler or the arch reader, and manifests with
    fields of the wrong type (issue 33, test_hostile_artifacts.py)."""
    from edgeprune.core.source import resolve
    from tests.test_hostile_artifacts import storage_key_mismatch

    (d / "pop.pth").write_bytes(b"t.")  # TUPLE with nothing marked: IndexError
    (d / "memo.pth").write_bytes(b"\x80\x02h\x05.")  # a memo entry never set: KeyError
    (d / "storagekey.pth").write_bytes(storage_key_mismatch())  # AssertionError
    sd = make_state_dict("deit_tiny")
    torch.save({**sd, "pos_embed": sd["pos_embed"].flatten()}, d / "pos1d.pth")
    torch.save({**sd, "cls_token": sd["cls_token"].long()}, d / "intw.pth")
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.1.")}, d / "gap.pth")
    torch.save({**sd, "blocks.x.attn.qkv.weight": torch.zeros(1)}, d / "blockx.pth")
    spec = resolve("deit_tiny").describe()
    for name, changed in (
        ("dt", spec),
        ("km", {**spec, "keep_ratios": ["a", "b", "c"]}),
        ("om", {**spec, "options": [1, 2]}),
    ):
        (d / f"{name}.onnx").write_bytes(b"an artifact: refused before it is read")
        man = {"artifact": f"{name}.onnx", "target": "onnx", "spec": changed}
        (d / f"{name}.onnx.manifest.json").write_text(json.dumps(man))
