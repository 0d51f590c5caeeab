"""One process or many, as ``torchrun`` launches them.

``torchrun --nproc-per-node N -m edgeprune finetune …`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the same command without torchrun
is one process. Under torchrun the process group is gloo on the CPU and NCCL on CUDA
(each process on ``cuda:LOCAL_RANK``); rank 0 alone writes files and prints.

Everything a loss computes over the batch goes through ``global_mean``, a differentiable
mean over the processes of each process's batch mean, so that N processes at a global
batch B compute what one process computes at B (DistributedDataParallel averages the
gradients, which is the same for terms that are means over samples).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from edgeprune.core.errors import EdgepruneError


@dataclass(frozen=True)
class World:
    """This process's place: rank, number of processes, local rank, its device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def global_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over processes of ``x`` (each process's batch mean), differentiable:
        the global batch's mean when every process holds the same number of samples."""
        if not self.distributed:
            return x
        return dist_fn.all_reduce(x, op=dist.ReduceOp.SUM) / self.size

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over processes (no gradient): counts, correct predictions."""
        if not self.distributed:
            return x
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any (a non-finite loss somewhere)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def shard(world: World, n: int) -> list[int]:
    """This process's share of ``n`` items (``rank::size``: every process gets one more
    or one fewer than the others), as their positions."""
    return list(range(world.rank, n, world.size))


def gather_rows(world: World, rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Every process's ``rows`` (one per item: ``rows[i]`` is item ``index[i]``, a global
    position), gathered to every process in the order of ``index``: what one process
    holding all the items in order holds. A process with no rows passes ``len(index)``
    0 (any shape); with none anywhere, ``rows`` itself comes back."""
    rows, index = np.asarray(rows), np.asarray(index, dtype=np.int64)
    if len(rows) != len(index):
        raise ValueError(f"{len(rows)} rows for {len(index)} positions")
    if not world.distributed:
        parts = [(rows, index)]
    else:
        parts = [None] * world.size
        dist.all_gather_object(parts, (rows, index))
    parts = [(r, i) for r, i in parts if len(i)]
    if not parts:
        return rows
    every = np.concatenate([i for _, i in parts])
    return np.concatenate([r for r, _ in parts])[np.argsort(every, kind="stable")]


def launched() -> bool:
    """Whether torchrun (or another launcher with its environment) started us."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def start(device: torch.device) -> World:
    """Join the process group torchrun set up (gloo on the CPU, NCCL on CUDA); one
    process without it. ``device`` is the one asked for: under torchrun on CUDA each
    process takes ``cuda:LOCAL_RANK``."""
    if not launched():
        return World(device=device)
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise EdgepruneError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not numbers: {e}") from e
    if size == 1:
        return World(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise EdgepruneError(
            f"distributed training on {device.type} is not supported", "use cpu or cuda"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(rank=rank, size=size, local_rank=local, device=device)


def stop(world: World) -> None:
    """Leave the process group (a no-op for one process)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
