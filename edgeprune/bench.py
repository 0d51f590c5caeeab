"""``edgeprune bench``: end-to-end latency of one exported artifact."""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.profiles.devices import Device
from edgeprune.runtimes.timing import Timing, TimingPolicy


def policy_for(runs: int | None) -> TimingPolicy:
    if runs is not None and runs < 1:
        raise EdgepruneError(f"--runs {runs} must be at least 1")
    return TimingPolicy.fixed(runs) if runs else TimingPolicy(min_runs=20, min_time_s=1.0)


def bench_with_runner(runner, artifact: Path | str, runs: int | None = None) -> Timing:
    runner.load(artifact)
    return runner.time(policy_for(runs))


def bench(
    artifact: Path, device: Device, threads: int | None = None, runs: int | None = None
) -> Timing:
    """Time ``artifact`` on ``device`` (here, or over SSH when the device says so)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise EdgepruneError(f"artifact {artifact} does not exist")
    policy_for(runs)
    if device.transport == "ssh":
        from edgeprune.remote import bench_over_ssh
        from edgeprune.runtimes.ssh import SSHTransport

        return bench_over_ssh(artifact, device, SSHTransport(device.host or ""), threads, runs)
    from edgeprune.profile import make_runner

    runner = make_runner(device, threads or device.resolved_threads())
    return bench_with_runner(runner, artifact, runs)
