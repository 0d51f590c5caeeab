"""Hostile artifacts, checkpoints, manifests and device-runner output, one case each
(issue #33, items 4 and "silently wrong"): every one ends as one line and exit 2 —
never an internal error, a crash of the process, or a number that is wrong and
written out as if it were right. The fuzzing of the same formats is in
``test_fuzz_artifacts.py``; the CLI cases are also in ``test_bad_input_corpus.py``."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.core.checkpoint import load_state_dict
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.source import resolve
from edgeprune.runtimes.timing import Timing
from tests.conftest import make_state_dict
from tests.test_fuzz_artifacts import onnx_bytes, pte_bytes

ROOT = Path(__file__).resolve().parents[1]


def storage_key_mismatch() -> bytes:
    """A legacy-format checkpoint whose list of storage keys names a storage the pickle
    never made (one digit changed): torch.load ends in ``AssertionError: storage key …
    not found in deserialized_objects``."""
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    raw = bytearray(buf.getvalue())
    last = list(re.finditer(rb"X\x0e\x00\x00\x00([0-9]{14})", bytes(raw)))[-1].start(1)
    raw[last] = ord("1") if raw[last] != ord("1") else ord("2")
    return bytes(raw)


# ---- checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, was",
    [
        (b"t.", "IndexError: pop from empty list"),
        (b"\x80\x02h\x05.", "KeyError: 5"),
        (None, "AssertionError: storage key … not found"),
    ],
)
def test_unreadable_checkpoint_is_one_line_whatever_the_reader_raises(tmp_path, data, was):
    path = tmp_path / "c.pth"
    path.write_bytes(storage_key_mismatch() if data is None else data)
    with pytest.raises(EdgepruneError) as e:
        load_state_dict(path)
    assert "is not a readable PyTorch checkpoint" in e.value.one_line(), was
    assert "\n" not in e.value.one_line()


@functools.lru_cache(maxsize=1)
def _wrong_content() -> dict:
    sd = make_state_dict("deit_tiny")
    return {
        "a list": [torch.zeros(2)],
        "a tensor": torch.zeros(3),
        "a dict of non-tensors": {"a": 1, "b": "x"},
        "nested dicts without 'model'": {"encoder": {"w": torch.zeros(2)}},
        "a 1-d pos_embed": {**sd, "pos_embed": sd["pos_embed"].flatten()},
        "an empty pos_embed": {**sd, "pos_embed": torch.zeros(1, 0, 192)},
        "a 0-d head": {**sd, "head.weight": torch.tensor(1.0)},
        "a norm of another width": {**sd, "norm.weight": torch.ones(7)},
        "integer weights": {**sd, "cls_token": sd["cls_token"].long()},
        "boolean weights": {**sd, "blocks.0.attn.qkv.weight": torch.ones(576, 192).bool()},
        "complex weights": {**sd, "norm.weight": torch.ones(192, dtype=torch.complex64)},
        "a block index that is not a number": {**sd, "blocks.x.foo": torch.zeros(1)},
        "a block 10^8 deep": {**sd, "blocks.99999999.foo": torch.zeros(1)},
        "a block missing in the middle": {k: v for k, v in sd.items() if "blocks.1." not in k},
    }


@pytest.mark.parametrize("what", list(_wrong_content()))
def test_checkpoint_of_the_wrong_content_is_one_line(what, tmp_path):
    """A file torch.save wrote but that holds no ViT state_dict (the first four were
    already refused; the shapes, dtypes and block indices were internal errors, or were
    cast and loaded silently)."""
    path = tmp_path / "c.pth"
    torch.save(_wrong_content()[what], path)
    with pytest.raises(EdgepruneError) as e:
        resolve(str(path))
    assert "\n" not in e.value.one_line(), what


# ---- .onnx and .pte given to check, bench, evaluate ------------------------------------
def _one_line(code: int, err: str, want: int = 2) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("note:", "warning:"))]
    assert code == want and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def test_damaged_onnx_to_check_bench_evaluate_is_one_line(cli, tmp_path):
    from edgeprune.core.images import write_demo_images

    write_demo_images(tmp_path / "imgs", classes=1, per_class=1, size=16)
    good = onnx_bytes()
    for name, data in {
        "random.onnx": bytes(range(256)) * 3,
        "truncated.onnx": good[: len(good) // 2],
        "flipped.onnx": good[:40] + bytes(b ^ 0xFF for b in good[40:60]) + good[60:],
    }.items():
        p = tmp_path / name
        p.write_bytes(data)
        for args in (
            ["check", p, "--target", "trt"],
            ["bench", p, "--runs", "3"],
            ["evaluate", p, "--images", tmp_path / "imgs", "--reference", "deit_tiny"],
        ):
            code, _out, err = cli(*args)
            _one_line(code, err, want=1 if code == 1 and "check" in args[:1] else 2)


def crashing_pte(program: bytes) -> bytes:
    """``program`` with one byte of its XNNPACK payload's last constant key (64 hex
    digits, as the delegate names its weights) made a non-UTF-8 byte: loading it made
    the XNNPACK delegate log that key, and ExecuTorch's Python binding aborts the
    process on a log line that is not UTF-8 (``terminate called …``, exit 134)."""
    keys = list(re.finditer(rb"[0-9a-f]{64}", program))
    assert len(keys) >= 2, "no named constants in the program"
    raw = bytearray(program)
    raw[keys[-1].start() + 5] = 0xFF
    return bytes(raw)


def test_pte_that_aborted_executorch_is_one_line(tmp_path):
    """``bench`` and ``evaluate`` of that program, in a child process: exit 2 and one
    line; before, the process died with SIGABRT (it takes pytest with it in-process)."""
    from edgeprune.core.images import write_demo_images

    pte = tmp_path / "crash.pte"
    pte.write_bytes(crashing_pte(pte_bytes()))
    write_demo_images(tmp_path / "imgs", classes=1, per_class=1, size=16)
    cases = [
        ["bench", str(pte), "--runs", "3"],
        ["evaluate", str(pte), "--images", str(tmp_path / "imgs"), "--reference", "deit_tiny"],
    ]
    code = (
        "import json, sys\n"
        "from edgeprune.cli import main\n"
        f"for args in {cases!r}:\n"
        "    rc = main(args)\n"
        "    print(json.dumps(rc), flush=True)\n"
        "    print('--', file=sys.stderr, flush=True)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert res.returncode == 0, res.stderr[-800:]
    codes = [json.loads(line) for line in res.stdout.splitlines()]
    errors = res.stderr.split("--\n")
    assert len(codes) == len(cases)
    for rc, err in zip(codes, errors, strict=False):
        # (a fresh process that imports ExecuTorch also gets torch's own log line about
        # torchao's enum, "W1207 … _pytree.py …": not edgeprune's, left out here)
        err = "\n".join(ln for ln in err.splitlines() if not re.match(r"[WI]\d{4} ", ln))
        assert "crashed loading it" in _one_line(rc, err), err


def test_program_reader_refuses_a_method_name_that_is_not_utf8():
    """ExecuTorch decodes the method names in its Python binding: checked first."""
    from edgeprune.runtimes.executorch.runner import method_names, read_program

    program = pte_bytes()
    assert method_names(program) == ["forward"]
    at = program.index(b"forward")
    bad = program[:at] + b"\xff" + program[at + 1 :]
    with pytest.raises(EdgepruneError, match="not a valid ExecuTorch program"):
        read_program(bad)
    with pytest.raises(EdgepruneError, match="not a valid ExecuTorch program"):
        read_program(program[:4] + b"ET12" + b"\xff" * 8)


# ---- what device runners print -----------------------------------------------------------
HOSTILE_RUNNER = """\
#!{python}
# A STAND-IN executor_runner that runs nothing and prints $STANDIN_LOG (\\n-separated)
import os, sys
print(os.environ["STANDIN_LOG"].replace("\\\\n", "\\n"), file=sys.stderr)
"""


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """The STAND-IN adb (test_adb.py) with one phone whose executor_runner prints what
    a test puts in $STANDIN_LOG."""
    from tests.test_adb import STAND_IN_ADB, _script

    root = tmp_path / "device"
    (root / "data/local/tmp").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "adb", STAND_IN_ADB)
    _script(root / "data/local/tmp/executor_runner", HOSTILE_RUNNER)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_ROOT", str(root))
    monkeypatch.setenv("STANDIN_DEVICES", "SER1:device")
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    return root


LINE = "I 00:00:00.000 executorch:executor_runner.cpp:1] "


def _iterations(*times: str) -> str:
    n = len(times)
    return "\\n".join(f"{LINE}Iteration {i + 1} of {n}: {t} ms" for i, t in enumerate(times))


@pytest.mark.parametrize(
    "log, needle",
    [
        (f"{LINE}Model executed successfully 0 time(s) in 5.000 ms.", "0 time(s)"),
        (_iterations("1.0", "1.1", "1.2", "1.2.3", "1.0", "1.1"), "1.2.3"),
        (_iterations("1.0", "1.1", "1.2", "-2.35", "1.0", "1.1"), "-2.35"),
        (_iterations("1.0", "1.1", "1.2", "nan", "1.0", "1.1"), "nan"),
        (_iterations("1.0", "1.1", "1.2", "1e400", "1.0", "1.1"), "1e400"),
    ],
)
def test_bench_over_adb_refuses_impossible_runner_times(
    cli, phone, tmp_path, monkeypatch, log, needle
):
    """Before: ZeroDivisionError and ValueError (exit 1), and a negative or NaN time
    dropped from the samples without a word (exit 0 with the rest)."""
    monkeypatch.setenv("STANDIN_LOG", log)
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"\0\0\0\0ET12" + bytes(64))  # a program's header: the runner runs nothing
    code, _out, err = cli("bench", pte, "--device", "android-arm64", "--runs", "3", "--json")
    line = _one_line(code, err)
    assert "executor_runner" in line and needle in line, line


@pytest.fixture
def remote_python(tmp_path, monkeypatch):
    """A STAND-IN for ``python3 -m edgeprune bench … --json`` on the far side: prints
    $STANDIN_JSON as its last line."""
    from tests.test_adb import _script

    return _script(
        tmp_path / "remote-python",
        "#!{python}\nimport os\nprint('timing…')\nprint(os.environ['STANDIN_JSON'])\n",
    )


GOOD = {"median_ms": 5.0, "p90_ms": 5.5, "min_ms": 4.9, "max_ms": 6.0, "runs": 20,
        "threads": 4, "runtime": "onnxruntime", "runtime_version": "1.20"}  # fmt: skip


@pytest.mark.parametrize(
    "text, needle",
    [
        (json.dumps({**GOOD, "gpu_ms": 1.0}), "gpu_ms"),
        (json.dumps({**GOOD, "median_ms": -2.35}), "median_ms"),
        (json.dumps({**GOOD, "median_ms": float("nan")}), "NaN is not a JSON number"),
        (json.dumps({**GOOD, "runs": "20"}), "runs"),
        (json.dumps({**GOOD, "runs": 0}), "runs"),
        (json.dumps({**GOOD, "median_ms": 9.0}), "median_ms"),
        (json.dumps({**GOOD, "extra": {"x": "1e4"}}).replace('"1e4"', "1e400"), "not a finite"),
        (json.dumps([GOOD]), "(top level)"),
    ],
)
def test_remote_bench_json_is_checked(remote_python, tmp_path, monkeypatch, text, needle):
    """A remote edgeprune's answer through the real plumbing (a temporary folder, the
    artifact put there, the command run; here through the local transport): an unknown
    key (before: TypeError), a negative, NaN or out-of-order time (before: returned as is,
    and written out), a count of the wrong type: one line."""
    from edgeprune.profiles.devices import Device
    from edgeprune.profiling.remote import bench_remote
    from edgeprune.runtimes.transports.local import LocalTransport

    art = tmp_path / "m.onnx"
    art.write_bytes(b"model")
    dev = Device(name="pi", runtime="onnxruntime", remote_python=str(remote_python))
    monkeypatch.setenv("STANDIN_JSON", json.dumps(GOOD))
    assert bench_remote(art, dev, LocalTransport(), None, None) == Timing(**GOOD)
    monkeypatch.setenv("STANDIN_JSON", text)
    with pytest.raises(EdgepruneError) as e:
        bench_remote(art, dev, LocalTransport(), None, None)
    line = e.value.one_line()
    assert line.startswith("remote bench on ") and needle in line, line


def test_timings_are_never_negative_nan_or_out_of_order():
    """Whoever builds a Timing (a runner's samples, a printed summary, a resume file)."""
    with pytest.raises(EdgepruneError, match="-2.35"):
        Timing.from_samples([1.0, -2.35, 1.2], runtime="executorch")
    with pytest.raises(EdgepruneError, match="nan"):
        Timing.from_samples([1.0, math.nan], runtime="onnxruntime")
    with pytest.raises(EdgepruneError, match="median_ms"):
        Timing(median_ms=-2.35, p90_ms=1.0, min_ms=0.5, max_ms=2.0, runs=3)
    with pytest.raises(EdgepruneError, match="runs"):
        Timing(median_ms=1.0, p90_ms=1.0, min_ms=1.0, max_ms=1.0, runs=0)
    with pytest.raises(EdgepruneError, match="p90_ms"):
        Timing(median_ms=1.0, p90_ms=3.0, min_ms=0.5, max_ms=2.0, runs=3)
    t = Timing.from_samples([3.0, 1.0, 2.0])
    assert (t.min_ms, t.median_ms, t.max_ms, t.runs) == (1.0, 2.0, 3.0, 3)


def test_ort_perf_test_and_trtexec_output_with_impossible_numbers():
    from edgeprune.runtimes.onnxruntime import parse_result_file, timing_from_summary
    from edgeprune.runtimes.tensorrt.runner import parse_export_times

    meta = {"runtime": "onnxruntime"}
    with pytest.raises(EdgepruneError, match="1.2.3"):
        timing_from_summary("Average inference time cost total: 1.2.3 ms", {}, meta)
    with pytest.raises(EdgepruneError, match="runs 0"):
        timing_from_summary("Average inference time cost total: 2 ms\nRuns:0", {}, meta)
    with pytest.raises(EdgepruneError, match="-0.001"):
        stats = "Min Latency: 0.002 s\nP50 Latency: -0.001 s\nP90 Latency: 0.003 s\n"
        timing_from_summary(stats + "Max Latency: 0.004 s", {}, meta)
    with pytest.raises(EdgepruneError, match="1.2.3"):
        parse_result_file("m,0.001,1,50,0\nm,1.2.3,1,50,1\n")
    assert parse_result_file("m,0.002,1,50,1\nm,0.001,1,50,0\n") == pytest.approx([1.0, 2.0])
    rows = [{"startComputeMs": 300.0, "latencyMs": v} for v in (1.0, -1.0)]
    with pytest.raises(EdgepruneError, match="-1.0"):
        parse_export_times(json.dumps(rows), 200.0)
    with pytest.raises(EdgepruneError, match="NaN"):
        parse_export_times('[{"startComputeMs": 300, "latencyMs": nan}]', 200.0)


def test_json_is_never_written_with_nan(tmp_path, capsys):
    """The JSON writers (files and --json) refuse NaN/Infinity with one line, nothing
    written (Python's json writes a bare NaN, which is not JSON)."""
    from edgeprune.cli.console import print_json
    from edgeprune.core.atomic import write_json_atomic

    with pytest.raises(EdgepruneError, match=r"a\.b\[1\]"):
        write_json_atomic(tmp_path / "x.json", {"a": {"b": [1.0, math.nan]}})
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(EdgepruneError, match="median_ms"):
        print_json({"median_ms": math.inf})
    assert capsys.readouterr().out == ""


# ---- silently wrong: evaluate --reference of another architecture --------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A tiny dense DeiT exported to ONNX (its manifest records its architecture), and a
    checkpoint of another architecture (one block less)."""
    from dataclasses import replace

    from edgeprune.core.images import write_demo_images
    from edgeprune.core.models.deit import VisionTransformer
    from edgeprune.export.registry import ExportRequest
    from edgeprune.export.targets import export_source
    from tests.accuracy_helper import TINY, write_dense

    d = tmp_path_factory.mktemp("hostile_eval")
    ckpt = write_dense(d / "tiny.pth")
    other = d / "other.pth"
    arch = replace(TINY, depth=3)
    torch.save({"model": VisionTransformer(arch).init_random(1).state_dict()}, other)
    write_demo_images(d / "imgs", classes=2, per_class=2, size=32)
    onnx = d / "m.onnx"
    req = ExportRequest(target="onnx", out=onnx, parity_inputs=1)
    assert export_source(resolve(str(ckpt), heads=2), req).error is None
    return d, ckpt, other, onnx


def test_evaluate_refuses_a_reference_of_another_architecture(tiny_onnx, cli):
    """Before: exit 0, the artifact compared with a model of another architecture as if
    it were its source (the arch check compared the reference with itself)."""
    d, ckpt, other, onnx = tiny_onnx
    code, _out, err = cli("evaluate", onnx, "--images", d / "imgs", "--reference", other,
                          "--heads", "2")  # fmt: skip
    line = _one_line(code, err)
    assert "--reference" in line and "m.onnx" in line, line
    code, out, err = cli("evaluate", onnx, "--images", d / "imgs", "--reference", ckpt,
                         "--heads", "2", "--json")  # fmt: skip
    assert code == 0, err
    rep = json.loads(out)
    assert rep["references"]["reference"]["top1_agreement"] == 100.0


# ---- finetune's numbers and device --------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("latency_weight", -10.0, "--latency-weight"),
        ("latency_weight", math.nan, "--latency-weight"),
        ("latency_weight", math.inf, "--latency-weight"),
        ("distill_weight", -1.0, "--distill-weight"),
        ("epochs", 0, "--epochs"),
        ("batch", -1, "--batch"),
        ("limit", 0, "--limit"),
        ("steps_per_epoch", 0, "--steps-per-epoch"),
        ("workers", -1, "--workers"),
        ("seed", -1, "--seed"),
        ("seed", 2**64, "--seed"),
        ("device", "tpu", "tpu"),
        ("device", "cuda:x", "cuda:x"),
        ("device", "cpu:1", "cpu:1"),
        ("optim.lr", 0.0, "--lr"),
        ("optim.lr", -1e-3, "--lr"),
        ("optim.backbone_lr_scale", -0.5, "--backbone-lr-scale"),
        ("optim.weight_decay", math.nan, "--weight-decay"),
        ("optim.mixup", -1.0, "--mixup"),
        ("optim.smoothing", 1.0, "--smoothing"),
        ("optim.ema_decay", 1.0, "--ema"),
        ("optim.amp", "fp8", "--amp"),
        ("data_recipe.reprob", 2.0, "--reprob"),
    ],
)
def test_finetune_refuses_out_of_range_settings_before_training(tmp_path, field, value, needle):
    from edgeprune.training.finetune import FinetuneRequest, finetune_to_file

    req = FinetuneRequest(src="deit_tiny", data=tmp_path / "nope", profile=tmp_path / "t.json",
                          target_ms=5.0)  # fmt: skip
    obj, name = (
        (req, field)
        if "." not in field
        else (getattr(req, field.split(".")[0]), field.split(".")[1])
    )
    setattr(obj, name, value)
    with pytest.raises(EdgepruneError) as e:
        finetune_to_file(req, tmp_path / "out.pth")
    assert needle in e.value.one_line() and "nope" not in e.value.one_line()
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_finetune_on_cuda_without_a_gpu_is_one_line():
    from edgeprune.training.device import train_device

    assert train_device("cpu") == torch.device("cpu")
    with pytest.raises(EdgepruneError, match="no CUDA GPU here"):
        train_device("cuda:0")


def test_numpy_floats_from_a_runner_are_times_too():
    t = Timing.from_samples([np.float64(1.5), np.float32(2.5), 2])
    assert t.median_ms == 2.0
