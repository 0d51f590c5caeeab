"""Fuzzing the binary files and tool output edgeprune reads: checkpoints (zip and legacy
``torch.save`` files), ``.onnx`` and ``.pte`` artifacts, artifact manifests, and what a
device runner prints (executor_runner logs, onnxruntime_perf_test's result file and
summary, trtexec's ``--exportTimes`` JSON, a remote edgeprune's ``bench --json``)
(issue #33, item 4).

Each format starts from a valid file made by the code (or by the tool's own format),
mutated ``fuzz_cases`` times with a fixed seed: random bytes, truncations, byte flips,
and for text and JSON wrong types, missing and extra keys, and NaN / ±inf / 1e400 /
negative / malformed numbers. Every case must either load and be usable (a state_dict
of tensors, a finite timing ≥ 0, a model that runs) or raise ``EdgepruneError`` with one
line: never another exception, never a crash of the process. Checkpoints also go
through ``edgeprune inspect`` for a few dozen cases; ``.pte`` files load through the
runner for a few dozen (each spends a child process: see ``probe_program``).

Each test records ``fuzz_format``, ``fuzz_cases`` and ``fuzz_failures`` for
``benchmarks/fuzz.py`` (``Failures`` of ``test_fuzz_files``).
"""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.accuracy.evaluate import source_from_manifest
from edgeprune.core.checkpoint import load_state_dict
from edgeprune.export.manifest import read_manifest
from edgeprune.export.targets import check_file
from edgeprune.profiling.remote import remote_timing
from edgeprune.runtimes.onnxruntime import (
    OnnxRuntimeRunner,
    parse_result_file,
    timing_from_summary,
)
from edgeprune.runtimes.tensorrt.runner import parse_export_times
from edgeprune.runtimes.timing import Timing
from tests.test_fuzz_files import Failures, json_cases

SEED = 34


# ---- the valid files the cases start from ----------------------------------------------
def small_state_dict() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "blocks.0.attn.qkv.weight": torch.randn(6, 2, generator=g),
            "blocks.0.attn.qkv.bias": torch.randn(6, generator=g),
            "pos_embed": torch.randn(1, 5, 2, generator=g),
            "steps": torch.arange(4),
        },
        "epoch": 3,
    }


@functools.lru_cache(maxsize=1)
def checkpoint_bytes() -> dict[str, bytes]:
    """A small checkpoint in both of torch.save's formats: zip (the default) and legacy."""
    import io

    out = {}
    for fmt, zipped in (("zip", True), ("legacy", False)):
        buf = io.BytesIO()
        torch.save(small_state_dict(), buf, _use_new_zipfile_serialization=zipped)
        out[fmt] = buf.getvalue()
    return out


@functools.lru_cache(maxsize=1)
def onnx_bytes() -> bytes:
    """A small static graph with a weight, a Softmax and a constant-K TopK."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.linspace(-1, 1, 64 * 10, dtype=np.float32).reshape(64, 10)
    w = numpy_helper.from_array(w, "W")
    k = numpy_helper.from_array(np.array([3], np.int64), "K")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),
            helper.make_node("Softmax", ["h"], ["logits"], axis=-1),
            helper.make_node("TopK", ["logits", "K"], ["v", "i"], axis=-1),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 3]),
        ],
        [w, k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x):
        return torch.softmax(self.fc(x), -1)


@functools.lru_cache(maxsize=1)
def pte_bytes() -> bytes:
    """A small XNNPACK-delegated ExecuTorch program, lowered as ``export`` lowers."""
    pytest.importorskip("executorch", reason='needs pip install "edgeprune[executorch]"')
    from edgeprune.export.targets import get_target

    return get_target("executorch").module_artifact(_Small().eval(), (1, 16))


def byte_cases(raw: bytes, n: int, seed: int, hot: int = 0):
    """``n`` damaged copies of ``raw``: random bytes, truncations, byte flips (with
    ``hot``, half the flips land in the first and last ``hot`` bytes, where the headers
    and indexes are)."""
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        kind = rng.choice(["random", "truncate", "flip", "flip", "flip"])
        if kind == "random":
            data = rng.randbytes(rng.randrange(0, 2 * len(raw) + 2))
            if rng.random() < 0.3:  # keep the magic numbers: the reader goes further
                data = raw[:8] + data[8:]
            yield f"case {i}: random bytes", data
        elif kind == "truncate":
            at = rng.randrange(0, len(raw))
            yield f"case {i}: truncated at {at}", raw[:at]
        else:
            b = bytearray(raw)
            flips = rng.randint(1, 8)
            for _ in range(flips):
                if hot and rng.random() < 0.5:  # near the start or the end
                    j = rng.randrange(min(hot, len(b)))
                    j = j if rng.random() < 0.5 else len(b) - 1 - j
                else:
                    j = rng.randrange(len(b))
                b[j] ^= rng.randint(1, 255)
            yield f"case {i}: {flips} byte flips", bytes(b)


def _one_line(err: str, what: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith("error:"), f"{what}: {err[-500:]}"


# ---- checkpoints -----------------------------------------------------------------------
def _state_dict_ok(sd: object) -> None:
    assert isinstance(sd, dict) and sd, sd
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_fuzz_checkpoint_load_state_dict(fmt, tmp_path, fuzz_cases, record_property):
    """Damaged zip and legacy checkpoints: a state_dict of tensors or one line (before
    the fix, 14–20 of 600 ended in IndexError, KeyError, struct.error or AssertionError
    from the unpickler)."""
    f = Failures(record_property, fuzz_cases, f"checkpoint ({fmt})")
    path = tmp_path / "c.pth"
    for what, data in byte_cases(checkpoint_bytes()[fmt], fuzz_cases, SEED, hot=600):
        path.write_bytes(data)
        f.check(what, lambda: _state_dict_ok(load_state_dict(path)))
    f.done()


def test_fuzz_checkpoint_cli_inspect(tmp_path, cli, fuzz_cases, record_property):
    """A few dozen damaged checkpoints of a real (tiny) ViT through ``edgeprune
    inspect``: exit 0, or exit 2 with one line; never exit 1."""
    from tests.accuracy_helper import write_dense

    good = write_dense(tmp_path / "good.pth")
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(good, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    n = max(8, fuzz_cases // 6)
    f = Failures(record_property, n, "checkpoint (edgeprune inspect)")
    path = tmp_path / "c.pth"
    sources = [good.read_bytes(), legacy.read_bytes()]
    for i, (what, data) in enumerate(byte_cases(sources[0], n, SEED + 1, hot=1500)):
        if i % 2:
            what, data = next(byte_cases(sources[1], 1, SEED + 1000 + i, hot=1500))
        path.write_bytes(data)

        def run(what=what):
            code, _out, err = cli("inspect", path)
            assert code in (0, 2), f"exit {code}: {err[-300:]}"
            if code == 2:
                _one_line(err, what)

        f.check(what, run)
    f.done()


# ---- ONNX ------------------------------------------------------------------------------
def _onnx_ok(path: Path) -> None:
    findings = check_file(path, "trt")
    assert isinstance(findings, list)
    runner = OnnxRuntimeRunner(threads=1)
    runner.load(path)
    shapes = runner.input_shapes()
    x = {name: np.ones(shape, np.float32) for name, shape in shapes.items()}
    outs = runner.run(x)
    assert outs and all(isinstance(o, np.ndarray) for o in outs)


def test_fuzz_onnx_check_and_load(tmp_path, fuzz_cases, record_property):
    """Damaged .onnx files through ``check``'s reader and the onnxruntime runner
    (``bench`` and ``evaluate`` load through it): usable, or one line."""
    f = Failures(record_property, fuzz_cases, "onnx")
    path = tmp_path / "m.onnx"
    for what, data in byte_cases(onnx_bytes(), fuzz_cases, SEED + 2):
        path.write_bytes(data)
        f.check(what, lambda: _onnx_ok(path))
    f.done()


# ---- ExecuTorch programs ---------------------------------------------------------------
def test_fuzz_pte_read_program(fuzz_cases, record_property):
    """Damaged .pte bytes through the runner's own check of the program (magic number,
    method names read with every offset bounds-checked): a program or one line."""
    from edgeprune.runtimes.executorch.runner import read_program

    f = Failures(record_property, fuzz_cases, "pte (read_program)")
    for what, data in byte_cases(pte_bytes(), fuzz_cases, SEED + 3):
        f.check(what, lambda data=data: read_program(data))
    f.done()


def test_fuzz_pte_runner_load(tmp_path, fuzz_cases, record_property):
    """A few dozen damaged .pte files loaded and run by the ExecuTorch runner from a path
    (as ``bench`` and ``evaluate`` do): runs, or one line — and this process lives (a
    damaged XNNPACK payload used to abort it from inside ExecuTorch's binding)."""
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    n = max(6, fuzz_cases // 16)
    f = Failures(record_property, n, "pte (runner)")
    path = tmp_path / "m.pte"

    def run() -> None:
        r = ExecuTorchRunner(threads=1)
        r.load(path)
        shape = next(iter(r.input_shapes().values()))
        out = r.run(np.ones(shape, np.float32))
        assert out and isinstance(out[0], np.ndarray)

    for what, data in byte_cases(pte_bytes(), n, SEED + 4):
        path.write_bytes(data)
        f.check(what, run)
    f.done()


# ---- manifests -------------------------------------------------------------------------
def manifest_dict() -> dict:
    from edgeprune.core.source import resolve
    from edgeprune.export.manifest import MANIFEST_VERSION

    src = resolve("deit_tiny:dynamicvit@0.7")
    return {
        "manifest_version": MANIFEST_VERSION,
        "target": "onnx",
        "artifact": "m.onnx",
        "spec": src.describe(),
        "token_plan": src.plan.to_dict(),
        "sha256": "0" * 64,
        "notes": [],
    }


def test_fuzz_manifest_read_and_source(tmp_path, fuzz_cases, record_property):
    """Damaged manifests beside an artifact: read (its fields typed) and turned into the
    artifact's source as ``evaluate`` does, or one line — a string keep ratio, an
    ``options`` list or a ``token_plan`` number used to be internal errors."""
    f = Failures(record_property, fuzz_cases, "manifest")
    art = tmp_path / "m.onnx"
    art.write_bytes(b"")
    mpath = tmp_path / "m.onnx.manifest.json"

    def use() -> None:
        found = read_manifest(art)
        if found is not None and found[1].spec is not None:
            src = source_from_manifest(art)
            assert src.plan.attn_tokens and all(n >= 1 for n in src.plan.attn_tokens)

    for what, data in json_cases(manifest_dict(), fuzz_cases, SEED + 5):
        mpath.write_bytes(data)
        f.check(what, use)
    f.done()


# ---- what device runners print ---------------------------------------------------------
HOSTILE_TIMES = [
    "1.25", "0", "0.0", "12", "1e-3", "3.5e2", "-2.35", "-0", "nan", "NaN", "inf", "-inf",
    "1e400", "1.2.3", "", "1..2", ".", "e5", "0x10", "١٢", "1,5", "12ms", "+1", "9" * 400,
]  # fmt: skip
HOSTILE_COUNTS = ["0", "1", "3", "-1", "x", "1.5", "", "99999999999", "9" * 5000, "٣"]


def _timing_ok(t: Timing) -> None:
    values = [t.median_ms, t.p90_ms, t.min_ms, t.max_ms]
    assert all(isinstance(v, float | int) and math.isfinite(v) and v >= 0 for v in values), t
    assert t.runs >= 1 and t.min_ms <= t.median_ms <= t.max_ms, t
    json.dumps(t.to_dict(), allow_nan=False)  # what bench --json prints


def executor_runner_log(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(0, 8)
    lines = ["I 00:00:00.000 executorch:executor_runner.cpp:1] Model loaded."]
    for i in range(1, n + 1):
        t = rng.choice(HOSTILE_TIMES) if rng.random() < 0.2 else f"{rng.uniform(0.1, 30):.3f}"
        lines.append(f"I executorch:executor_runner.cpp:1] Iteration {i} of {n}: {t} ms")
    if rng.random() < 0.6:
        runs = rng.choice(HOSTILE_COUNTS) if rng.random() < 0.4 else str(n)
        total = rng.choice(HOSTILE_TIMES) if rng.random() < 0.4 else f"{rng.uniform(1, 99):.3f}"
        lines.append(
            "I 00:00:00.000 executorch:executor_runner.cpp:1] Model executed successfully "
            f"{runs} time(s) in {total} ms."
        )
    if rng.random() < 0.1:
        rng.shuffle(lines)
    return "\n".join(lines), rng.randint(0, 3)


def test_fuzz_runner_output_executor_runner(fuzz_cases, record_property):
    """executor_runner logs with hostile times and counts ("0 time(s)", "1.2.3 ms",
    "-2.35 ms", "nan ms"): a finite timing ≥ 0, or one line."""
    from edgeprune.runtimes.executorch.runner import samples_from_log

    f = Failures(record_property, fuzz_cases, "runner output (executor_runner)")
    for i in range(fuzz_cases):
        log, warmup = executor_runner_log(random.Random(SEED * 7919 + i))

        def use(log=log, warmup=warmup):
            samples, _note = samples_from_log(log, warmup)
            _timing_ok(Timing.from_samples(samples, runtime="executorch"))

        f.check(f"case {i}: {log[-120:]!r}", use)
    f.done()


def test_fuzz_runner_output_ort_perf_test(fuzz_cases, record_property):
    """onnxruntime_perf_test's result file and printed statistics with hostile numbers:
    a finite timing ≥ 0, or one line."""
    f = Failures(record_property, fuzz_cases, "runner output (onnxruntime_perf_test)")
    for i in range(fuzz_cases):
        rng = random.Random(SEED * 104729 + i)

        def t(rng=rng) -> str:
            hostile = rng.random() < 0.25
            return rng.choice(HOSTILE_TIMES) if hostile else f"{rng.uniform(1e-4, 0.05):g}"

        rows = [f"model,{t()},1234,50,{j}" for j in range(rng.randint(0, 6))]
        stats = [f"{k} Latency: {t()} s" for k in ("Min", "P50", "P90", "Max")]
        stats = [line for line in stats if rng.random() < 0.9]
        stdout = "\n".join([*stats, f"Average inference time cost total: {t()} ms",
                            f"Total inference requests: {rng.choice(HOSTILE_COUNTS)}"])  # fmt: skip

        def use(rows=rows, stdout=stdout):
            samples = parse_result_file("\n".join(rows))
            if samples:
                _timing_ok(Timing.from_samples(samples, runtime="onnxruntime"))
            else:
                _timing_ok(timing_from_summary(stdout, {}, {"runtime": "onnxruntime"}))

        f.check(f"case {i}: {rows} {stdout!r}", use)
    f.done()


def test_fuzz_runner_output_trtexec(fuzz_cases, record_property):
    """trtexec's --exportTimes JSON with hostile rows: a finite timing ≥ 0, or one line."""
    rows = [
        {"startComputeMs": 150.0 + 10 * i, "latencyMs": 1.5 + 0.1 * i, "computeMs": 1.2,
         "h2dMs": "__NAN__"}
        for i in range(12)
    ]  # fmt: skip
    f = Failures(record_property, fuzz_cases, "runner output (trtexec --exportTimes)")
    for what, data in json_cases(rows, fuzz_cases, SEED + 6):
        text = data.decode("utf-8", "replace")

        def use(text=text):
            _timing_ok(Timing.from_samples(parse_export_times(text, 200.0), runtime="tensorrt"))

        f.check(what, use)
    f.done()


def test_fuzz_runner_output_remote_json(fuzz_cases, record_property):
    """The JSON a remote edgeprune's ``bench --json`` prints, damaged (an extra key, a
    negative or NaN median, a string count…): a finite timing ≥ 0, or one line."""
    good = Timing.from_samples([5.0, 5.5, 6.0, 5.2, 5.1, 5.3, 7.0], runtime="onnxruntime")
    d = {"artifact": "m.onnx", "device": "pi5", "host": "pi", **good.to_dict()}
    d["extra"] = {"conditions": {"where": "pi", "hottest_c": [41.0, 42.5]}}
    f = Failures(record_property, fuzz_cases, "runner output (remote bench --json)")
    for what, data in json_cases(d, fuzz_cases, SEED + 7):
        stdout = "progress…\n" + data.decode("utf-8", "replace")
        f.check(what, lambda stdout=stdout: _timing_ok(remote_timing(stdout, "pi")))
    f.done()
