"""``finetune`` at scale: ``torchrun --nproc-per-node 2`` on the CPU (gloo) gives the
run one process gives at the same global batch; an interrupted run resumed with
``--resume`` ends where an uninterrupted one does; refusals are one line, exit 2.

The runs are real processes (torchrun, SIGINT); the reference is the same command in
one process, uninterrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training_helper import setup_dir

ARGS = ["--table", "profile.json", "--target-ms", "3", "--method", "dynamicvit", "--locs",
        "1,2,3", "--heads", "2", "--batch", "8", "--epochs", "2", "--no-augment", "--mixup", "0",
        "--cutmix", "0", "--smoothing", "0", "--weight-decay", "0", "--lr", "1e-2",
        "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    return setup_dir(tmp_path_factory.mktemp("ddp"))


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def finetune(d: Path, *extra: str, procs: int = 1, table: bool = True) -> subprocess.Popen:
    """``edgeprune finetune dense.pth --data data`` in ``d`` with ARGS (``table``: the
    table-and-target ones) and ``extra``, on ``procs`` processes."""
    base = ARGS if table else ARGS[ARGS.index("--heads") :]
    cmd = [sys.executable, "-m", "edgeprune", "finetune", "dense.pth", "--data", "data",
           *base, *extra]  # fmt: skip
    if procs > 1:  # torchrun, as a user runs it (its module form: no PATH needed)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(procs), *cmd[1:]]  # fmt: skip
    return subprocess.Popen(cmd, cwd=d, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def run(d: Path, out: str, *extra: str, procs: int = 1) -> tuple[int, str, str]:
    p = finetune(d, "--out", out, *extra, procs=procs)
    o, e = p.communicate(timeout=300)
    return p.returncode, o, e


@pytest.fixture(scope="module")
def one(d):
    code, o, e = run(d, "one.pth", "--json")
    assert code == 0, e
    return json.loads(o)


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_two_processes_equal_one_at_the_same_global_batch(d, one):
    code, o, e = run(d, "two.pth", "--json", procs=2)
    assert code == 0, e
    two = json.loads(o)  # rank 0 alone prints: one JSON document
    assert two["processes"] == 2 and one["processes"] == 1
    a, b = _weights(d / "one.pth"), _weights(d / "two.pth")
    assert a.keys() == b.keys()
    for k in a:  # float32 sums in another order: far below what a step changes
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            # the key bias's gradient is 0 in exact arithmetic (softmax over the keys
            # is invariant to it); in float32 it is round-off, which AdamW normalises
            # into full-size steps, so one and two processes move it differently
            c = x.numel() // 3
            x, y = torch.cat([x[:c], x[2 * c :]]), torch.cat([y[:c], y[2 * c :]])
        torch.testing.assert_close(y, x, rtol=1e-4, atol=2e-5, msg=k)
    for e1, e2 in zip(one["epochs"], two["epochs"], strict=True):
        assert e2["loss"] == pytest.approx(e1["loss"], rel=1e-4)
        assert e2["top1"] == e1["top1"]
        assert e2["schedule"]["keep_ratios"] == pytest.approx(
            e1["schedule"]["keep_ratios"], abs=2e-3
        )
    assert sorted(p.name for p in d.glob("two*")) == ["two.jsonl", "two.png", "two.pth"]


def interrupt_after_epoch_1(
    d: Path, out: str, *extra: str, procs: int = 1, table: bool = True
) -> None:
    """Run finetune, send SIGINT once its first epoch's checkpoint appears, and see that
    the file says epoch 1. A busy machine can let the run finish its second epoch before
    the signal lands: then the run is started again (three tries)."""
    for _ in range(3):
        (d / out).unlink(missing_ok=True)
        p = finetune(d, "--out", out, *extra, procs=procs, table=table)
        try:
            deadline = time.monotonic() + 240
            while not (d / out).exists() and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            p.send_signal(signal.SIGINT)  # in epoch 2 (or its checkpoint): the file stays whole
            p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        if torch.load(d / out, weights_only=True)["resume"]["epoch"] == 1:
            return
    raise AssertionError("the run finished before every interruption")


def test_interrupted_run_resumes_to_the_uninterrupted_result(d, one):
    """The same command as ``one`` (uninterrupted), stopped by SIGINT in its second
    epoch and resumed: the weights it ends with are ``one``'s, bit for bit."""
    interrupt_after_epoch_1(d, "cut.pth")
    code, o, e = run(d, "cut.pth", "--resume", "cut.pth", "--json")
    assert code == 0, e
    a, b = _weights(d / "one.pth"), _weights(d / "cut.pth")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert json.loads(o)["resumed_from"] == 1


def test_resume_with_another_runs_checkpoint_is_refused(d, one):
    code, _, e = run(d, "other.pth", "--seed", "5", "--resume", "one.pth")
    assert code == 2 and "another run's checkpoint" in e and "seed" in e
    assert len(e.strip().splitlines()) == 1 and "Traceback" not in e
