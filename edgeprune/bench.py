"""``edgeprune bench``: end-to-end latency of one exported artifact, on a device here
or through the device's transport."""

from __future__ import annotations

from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.profiles.devices import Device
from edgeprune.runtimes.base import runner_for_device
from edgeprune.runtimes.timing import Timing, policy_for
from edgeprune.runtimes.transports import open_transport

# the device ``bench`` uses when none is named: by the artifact's suffix, else "cpu"
DEFAULT_DEVICES = {".pte": "cpu-xnnpack"}


def device_name(artifact: Path, device: str | None) -> str:
    """``--device``, else the local device whose runtime loads ``artifact``'s kind."""
    return device or DEFAULT_DEVICES.get(Path(artifact).suffix.lower(), "cpu")


def bench(
    artifact: Path,
    device: Device,
    threads: int | None = None,
    runs: int | None = None,
    **transport_options,
) -> Timing:
    """Time ``artifact`` on ``device``: here, through its transport with the runtime's
    own runner (e.g. trtexec over SSH), or with edgeprune on the far side
    (``remote_runner = "edgeprune"``). ``transport_options``: e.g. ``config``/``timeout``."""
    artifact = Path(artifact)
    if threads is not None and threads < 1:
        raise EdgepruneError(f"--threads {threads} must be at least 1")
    if not artifact.exists():
        raise EdgepruneError(f"artifact {artifact} does not exist")
    policy = policy_for(runs)
    if device.transport == "local":
        runner = runner_for_device(device, threads or device.resolved_threads())
    else:
        transport = open_transport(device, **transport_options)
        if device.remote_runner == "edgeprune":
            from edgeprune.remote import bench_remote

            return bench_remote(artifact, device, transport, threads, runs)
        runner = runner_for_device(device, threads or device.threads or None, transport)
    runner.load(artifact)
    return runner.time(policy)
