"""``edgeprune profile`` as one library call: name the latency table, keep the
resume file, run the sweep here or through the device's transport, plot, summarise."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.core.arch import get_arch
from edgeprune.core.atomic import Output, check_outputs
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import get_method
from edgeprune.latency.table import LatencyTable
from edgeprune.profiles.devices import Device
from edgeprune.profiling.remote import profile_remote
from edgeprune.profiling.resume import resume_path
from edgeprune.profiling.sweep import ProfileRequest, measure, parse_grid
from edgeprune.render.plots import plot_table
from edgeprune.runtimes.base import runner_for_device
from edgeprune.runtimes.conditions import watched
from edgeprune.runtimes.timing import TimingPolicy, policy_for
from edgeprune.runtimes.transports import open_transport

Progress = Callable[[str, int, int], None]


@dataclass(kw_only=True)
class ProfileJob:
    """What ``edgeprune profile`` asks for (the sweep's own settings in ``request``)."""

    device: Device
    arch: str = "deit_small"
    method: str | None = None
    threads: int | None = None
    batch: int = 1
    out: Path | None = None
    runs: int | None = None
    grid: str | None = None
    check_points: int = 4
    chain: int = 4
    halves: bool = True
    e2e: bool = True
    plot: bool = True
    force: bool = False
    resume: bool = False
    transport_options: dict = field(default_factory=dict)  # e.g. SSH config, timeout
    pin: tuple[int, ...] | None = None  # CPUs to measure on (this machine)
    wait_quiet_s: float | None = None  # first wait up to this long for a quiet machine

    def request(self) -> ProfileRequest:
        a = get_arch(self.arch)
        if self.batch < 1:
            raise EdgepruneError(f"--batch {self.batch} is not a positive batch size")
        if self.threads is not None and self.threads < 1:
            raise EdgepruneError(f"--threads {self.threads} must be at least 1")
        return ProfileRequest(
            device=self.device,
            arch=a,
            method=get_method(self.method).name if self.method is not None else None,
            threads=self.threads,
            batch=self.batch,
            grid=parse_grid(self.grid, a.num_tokens),
            policy=policy_for(self.runs, TimingPolicy()),
            check_points=self.check_points,
            halves=self.halves,
            chain=self.chain,
            e2e=self.e2e,
        )

    def destination(self, req: ProfileRequest) -> Path:
        """``--out``, else ``profile_<device>_<arch>[_<method>].json``."""
        method = f"_{req.method}" if req.method else ""
        return self.out or Path(f"profile_{req.device.name}_{req.arch.name}{method}.json")

    def resume_file(self) -> Path | None:
        """The resume file this job keeps (None without ``resume``)."""
        return resume_path(self.destination(self.request())) if self.resume else None


@dataclass(kw_only=True)
class ProfileOutcome:
    """What ``profile_device`` made: the table, where it and its plot went, how long."""

    table: LatencyTable
    path: Path
    plot: Path | None
    seconds: float

    @property
    def summary(self) -> dict:
        """The figures ``edgeprune profile`` reports about the table (``summary``)."""
        return summary(self.table)


def profile_device(job: ProfileJob, progress: Progress | None = None) -> ProfileOutcome:
    """Measure ``job.device``'s latency table and write it (and its plot) atomically.
    On interruption nothing is written but the resume file (with ``resume``)."""

    req = job.request()
    dest = job.destination(req)
    png = dest.with_suffix(".png") if job.plot else None
    partial = resume_path(dest) if job.resume else None
    check_outputs(
        {
            "--out": Output(dest, ".json"),
            "the plot beside --out": png and Output(png, ".png"),
            "the resume file": partial and Output(partial, ".json", resumed=True),
        },
        force=job.force,
    )
    t0 = time.perf_counter()
    with watched(pin=job.pin, wait_quiet_s=job.wait_quiet_s, progress=progress) as cond:
        table = sweep_on_device(req, job.runs, progress, partial, job.transport_options)
    table.extra["conditions"] = cond  # this machine's, also while driving a device
    table.save(dest)
    if partial is not None:
        partial.unlink(missing_ok=True)
    secs = time.perf_counter() - t0
    if png is not None:
        plot_table(table, png)
    return ProfileOutcome(table=table, path=dest, plot=png, seconds=secs)


def sweep_on_device(
    req: ProfileRequest,
    runs: int | None = None,
    progress: Progress | None = None,
    resume: Path | None = None,
    transport_options: dict | None = None,
) -> LatencyTable:
    """The sweep where the device is: here, with edgeprune on the far side of its
    transport, or here driving the runtime's own runner through the transport."""

    dev = req.device
    if dev.transport == "local":
        return measure(req, progress, resume=resume)
    if resume is not None:
        raise EdgepruneError(f"--resume is not supported over {dev.transport} yet", "drop --resume")

    transport = open_transport(dev, **(transport_options or {}))
    if dev.remote_runner == "edgeprune":
        return profile_remote(req, transport, runs, progress)
    transport.check()
    runner = runner_for_device(dev, req.threads_used, transport)
    table = measure(req, progress, runner=runner)
    where = f"{transport.name}:{transport.where}"
    table.device["fingerprint"] = {"id": where, "via": dev.remote_runner}
    table.device["host"] = transport.where
    return table


def summary(table: LatencyTable) -> dict:
    """The figures ``edgeprune profile`` reports about a fresh table."""
    n = table.block.tokens[-1]
    out: dict = {
        "tokens": n,
        "block_ms": table.block.at(n),
        "embed_ms": table.embed.median_ms,
        "head_ms": table.head.median_ms,
    }
    noise, retimed = table.extra.get("noise"), table.extra.get("retimed")
    if noise:
        out["noise"] = noise
    if retimed:
        out["retimed"] = retimed["count"]
        out["still_breaking"] = len(retimed["still_breaking"])
    chk = table.extra.get("interp_check")
    if chk:
        out["interp_max_rel_err"] = chk["max_rel_err"]
        out["interp_points"] = len(chk["points"])
    if table.e2e is not None:
        fit = table.extra.get("e2e_fit", [])
        out["e2e"] = {
            "anchors": len(table.e2e.anchors),
            "offset_ms": table.e2e.offset_ms,
            "scale": table.e2e.scale,
            "worst_rel_err": max(
                (abs(r["corrected_ms"] / r["measured_ms"] - 1) for r in fit), default=0.0
            ),
        }
    return out
