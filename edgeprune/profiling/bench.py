"""``edgeprune bench``: end-to-end latency of one exported artifact, on a device here
or through the device's transport."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgeprune.core.errors import EdgepruneError
from edgeprune.profiles.devices import Device
from edgeprune.profiling.remote import bench_remote
from edgeprune.runtimes.base import runner_for_device, runtime
from edgeprune.runtimes.timing import Timing, policy_for
from edgeprune.runtimes.transports import open_transport

# the device ``bench`` uses when none is named: by the artifact's suffix, else "cpu"
DEFAULT_DEVICES = {".pte": "cpu-xnnpack"}
# on a device driven through a transport, the artifact's kind picks the runtime whose own
# binary times it there (a .pte: executor_runner; an .ort/.onnx: onnxruntime_perf_test)
RUNTIME_BY_SUFFIX = {".pte": "executorch", ".ort": "onnxruntime", ".onnx": "onnxruntime"}


def device_name(artifact: Path, device: str | None) -> str:
    """``--device``, else the local device whose runtime loads ``artifact``'s kind."""
    return device or DEFAULT_DEVICES.get(Path(artifact).suffix.lower(), "cpu")


def runtime_for(artifact: Path, device: Device) -> Device:
    """``device`` with the runtime that times ``artifact``'s kind there: another runtime
    when the device is driven from here through its transport and its descriptor gives
    that runtime's binary (android-arm64: ``executor_runner`` and ``ort_perf_test``)."""
    name = RUNTIME_BY_SUFFIX.get(Path(artifact).suffix.lower())
    driven = device.transport != "local" and device.remote_runner != "edgeprune"
    if name in (None, device.runtime) or not driven:
        return device
    if any(device.options.get(k) for k in runtime(name).device_options):
        return replace(device, runtime=name)
    return device


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
            return bench_remote(artifact, device, transport, threads, runs)
        device = runtime_for(artifact, device)
        runner = runner_for_device(device, threads or device.threads or None, transport)
    runner.load(artifact)
    return runner.time(policy)
