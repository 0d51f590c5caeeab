"""``edgeprune bench``: end-to-end latency of one exported artifact, on a device here
or through the device's transport: the median with its 95 % interval, timed until that
interval is within the tolerance or the time limit passes, and the conditions it was
timed under (``Timing.extra["conditions"]``, see ``runtimes.conditions``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgeprune.core.backends.runner import runtime
from edgeprune.core.errors import EdgepruneError
from edgeprune.export.manifest import verify_artifact
from edgeprune.profiles.devices import Device
from edgeprune.profiling.remote import bench_remote
from edgeprune.runtimes.base import runner_for_device
from edgeprune.runtimes.conditions import Watch, hottest, pinned, thermal_over, wait_quiet
from edgeprune.runtimes.timing import Timing, TimingPolicy, policy_for
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


@dataclass(kw_only=True)
class BenchOptions:
    """How ``bench`` measures, beyond threads and runs. ``tolerance``: the interval's
    half-width to reach, a share of the median (None: ±2 %); ``max_time_s``: time no
    longer (None: 10 s); ``wait_quiet_s``: first wait up to this long for a quiet machine
    (None: do not wait); ``pin``: the CPUs to run on (None: as they are); ``cooldown_s``:
    rest this long before timing (a phone's heat from the last run fades);
    ``verify_hash``: check the artifact against the sha256 its manifest records first
    (False: ``--no-verify-hash``, recorded as ``extra["sha256"] = "not checked"``)."""

    tolerance: float | None = None
    max_time_s: float | None = None
    wait_quiet_s: float | None = None
    pin: tuple[int, ...] | None = None
    cooldown_s: float = 0.0
    verify_hash: bool = True

    def check(self, device: Device) -> None:
        for name, value in (("--wait-quiet", self.wait_quiet_s), ("--cooldown", self.cooldown_s)):
            if value is not None and value < 0:
                raise EdgepruneError(f"{name} {value:g} must be 0 seconds or more")
        here = self.pin is None and not self.wait_quiet_s
        if device.transport != "local" and not here:
            raise EdgepruneError(
                f"--pin and --wait-quiet act on this machine; {device.name} is reached "
                f"through {device.transport}",
                "leave them out for a device elsewhere (--cooldown rests it)",
            )


def bench(
    artifact: Path,
    device: Device,
    threads: int | None = None,
    runs: int | None = None,
    *,
    options: BenchOptions | None = None,
    progress=None,
    **transport_options,
) -> Timing:
    """Time ``artifact`` on ``device``: here, through its transport with the runtime's
    own runner (e.g. trtexec over SSH), or with edgeprune on the far side
    (``remote_runner = "edgeprune"``). ``transport_options``: e.g. ``config``/``timeout``;
    ``progress(text, done, total)``: told while waiting. The artifact's sha256 is
    checked against its manifest first (``extra["sha256"]`` says how it went)."""
    artifact = Path(artifact)
    opts = options or BenchOptions()
    if threads is not None and threads < 1:
        raise EdgepruneError(f"--threads {threads} must be at least 1")
    if not artifact.exists():
        raise EdgepruneError(f"artifact {artifact} does not exist")
    opts.check(device)
    hashed = verify_artifact(artifact, opts.verify_hash)
    t = _bench(artifact, device, threads, runs, opts, progress=progress, **transport_options)
    t.extra["sha256"] = hashed
    return t


def _bench(
    artifact: Path,
    device: Device,
    threads: int | None,
    runs: int | None,
    opts: BenchOptions,
    *,
    progress,
    **transport_options,
) -> Timing:
    """``bench`` once its inputs are checked: here, through the transport, or remote."""
    policy = policy_for(runs, tolerance=opts.tolerance, max_time_s=opts.max_time_s)
    if device.transport == "local":
        return _bench_here(artifact, device, threads, policy, opts, progress)
    transport = open_transport(device, **transport_options)
    if device.remote_runner == "edgeprune":
        return bench_remote(artifact, device, transport, threads, runs)
    device = runtime_for(artifact, device)
    runner = runner_for_device(device, threads or device.threads or None, transport)
    runner.load(artifact)
    _cool_down(opts.cooldown_s, progress)
    before = thermal_over(transport)
    t = runner.time(policy).judged(policy.tolerance)
    after = thermal_over(transport)
    t.extra["conditions"] = {
        "where": transport.where,
        "cooldown_s": opts.cooldown_s,
        "thermal_before": before,
        "thermal_after": after,
        "hottest_c": [hottest(before), hottest(after)],
    }
    return t


def _bench_here(
    artifact: Path,
    device: Device,
    threads: int | None,
    policy: TimingPolicy,
    opts: BenchOptions,
    progress,
) -> Timing:
    """``bench`` on this machine: pinned if asked, after the cool-down and the wait for a
    quiet machine if asked, the conditions watched while timing."""
    with pinned(opts.pin) as cpus:
        runner = runner_for_device(device, threads or device.resolved_threads())
        runner.load(artifact)
        _cool_down(opts.cooldown_s, progress)
        wait = None
        if opts.wait_quiet_s:
            wait = wait_quiet(opts.wait_quiet_s, cpus=cpus, progress=progress)
        watch = Watch(cpus)
        t = runner.time(policy).judged(policy.tolerance)
        conditions = watch.finish(threads=t.threads, pinned=opts.pin is not None, wait=wait)
    t.extra["conditions"] = conditions.to_dict()
    return t


def _cool_down(seconds: float, progress) -> None:
    """Rest ``seconds`` before timing, counting down in ``progress``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if progress is not None:
            progress(f"cooling down ({left:.0f} s)", int(seconds - left), int(seconds))
        time.sleep(min(1.0, left))
