"""``evaluate`` and ``sensitivity`` under ``torchrun --nproc-per-node 2`` on the CPU
(gloo): each process runs its share of the images, the answers are gathered in the
folder's order, and the result is the one process's (issue 31, item 2).

The runs are real processes: torchrun, and the same command in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from edgeprune.cli.app import main as cli
from edgeprune.core import distributed
from tests.accuracy_helper import write_dense, write_dynamicvit

PRUNED = ["--method", "dynamicvit", "--locs", "1,2,3", "--heads", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_in(rank: int, port: int, result: Path) -> None:
    """One of two gloo processes: rank r holds the rows of items r, r+2, … of 5 (row i
    is [10 i, -i]); then rank 0 alone holds a row, rank 1 none. Each process saves
    what it gathered: both must hold rows 0..4 in order, then row 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        world = distributed.World(rank=rank, size=2)
        mine = distributed.shard(world, 5)
        rows = np.array([[10.0 * i, -i] for i in mine])
        got = distributed.gather_rows(world, rows, np.array(mine))
        empty = distributed.gather_rows(  # a process with nothing (rank 1 here)
            world, rows[:1] if world.main else np.zeros((0, 0)), np.array(mine[:1] * world.main)
        )
        np.save(result / f"{rank}.npy", np.concatenate([got, empty]))
    finally:
        dist.destroy_process_group()


def test_gather_rows_in_two_gloo_processes_gives_the_one_process_order(tmp_path):
    mp.spawn(_gather_in, args=(_free_port(), tmp_path), nprocs=2, join=True)
    want = np.array([[10.0 * i, -i] for i in range(5)] + [[0.0, 0.0]])
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"{rank}.npy"), want)
    one = distributed.World()  # one process: the rows, ordered by their positions
    np.testing.assert_array_equal(
        distributed.gather_rows(one, np.array([[2.0], [0.0]]), np.array([2, 0])), [[0.0], [2.0]]
    )


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("acc_ddp")
    write_dense(d / "dense.pth")
    write_dynamicvit(d / "dyn.pth")
    code = cli(["demo-images", str(d / "imgs"), "--classes", "4", "--per-class", "3",
                "--size", "32"])  # fmt: skip
    assert code == 0
    (d / "imgs" / "class_001" / "broken.jpg").write_bytes(b"not an image")  # skipped on a shard
    return d


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def edgeprune(d: Path, *args: str, procs: int = 1) -> tuple[int, str, str]:
    """``edgeprune ARGS`` in ``d`` on ``procs`` processes (torchrun, its module form)."""
    cmd = [sys.executable, "-m", "edgeprune", *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(procs), *cmd[1:]]  # fmt: skip
    p = subprocess.run(cmd, cwd=d, env=_env(), capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_evaluate_on_two_processes_reports_what_one_does(d):
    args = ["evaluate", "dyn.pth", "--images", "imgs", "--reference", "dense.pth", *PRUNED,
            "--keep", "0.75,0.5,0.25", "--batch", "2", "--json"]  # fmt: skip
    runs = [edgeprune(d, *args, procs=n) for n in (1, 2)]
    for code, _, e in runs:
        assert code == 0, e
    one, two = (json.loads(o) for _, o, _ in runs)  # rank 0 alone prints: one document
    assert two["images_read"] == one["images_read"] == 12
    assert two["skipped_files"] == one["skipped_files"] == ["imgs/class_001/broken.jpg"]
    assert two["accuracy"] == one["accuracy"]
    assert two["references"].keys() == one["references"].keys() == {"reference", "dense"}
    for name, r1 in one["references"].items():
        r2 = two["references"][name]
        assert r2["top1_agreement"] == r1["top1_agreement"]
        assert r2["accuracy"] == r1["accuracy"]
        assert r2["kl"] == pytest.approx(r1["kl"], rel=1e-6, abs=1e-12)
        assert r2["max_logit_diff"] == pytest.approx(r1["max_logit_diff"], abs=1e-5)
    (d / "empty").mkdir()
    for bad in ("empty", "nowhere"):  # a refusal, a usage error: rank 0's line, once
        code, o, e = edgeprune(d, "evaluate", "dyn.pth", "--images", bad, *PRUNED, procs=2)
        assert code != 0 and o == "" and e.count("error:") == 1, e


def test_sensitivity_on_two_processes_writes_what_one_does(d):
    args = ["sensitivity", "dyn.pth", "--images", "imgs", *PRUNED, "--grid", "0.25,0.5,1",
            "--batch", "2", "--resume"]  # fmt: skip
    for n in (1, 2):
        code, _, e = edgeprune(d, *args, "--out", f"sens{n}.json", procs=n)
        assert code == 0, e
    one, two = (json.loads((d / f"sens{n}.json").read_text()) for n in (1, 2))
    assert not list(d.glob("*.partial.json"))
    assert two["images"] == one["images"] and two["images"]["read"] == 12
    assert two["dense"] == one["dense"] and two["indistinct"] == one["indistinct"]
    assert two["stages"].keys() == one["stages"].keys()
    for loc, s1 in one["stages"].items():
        s2 = two["stages"][loc]
        assert s2["accuracy"] == s1["accuracy"]
        assert s2["agreement_with_dense"] == s1["agreement_with_dense"]
        assert s2["kl_to_dense"] == pytest.approx(s1["kl_to_dense"], rel=1e-5, abs=1e-9)
