"""What every runner shares (``RunnerBase``), its timing (``TimedRunner.time``: warm-up +
timed runs on random inputs), runners driving a device's own binary, and the runners a
device descriptor names. The runner interface and the registry of runtimes are the core's
(``edgeprune.core.backends.runner``: ``Runner``, ``Runtime``, ``RUNTIMES``, ``get_runner``).

    runner = runner_for_device(get_device("cpu"), threads=2)
    runner.load(artifact)              # path or bytes
    timing = runner.time(policy)       # warm-up + timed runs on random inputs

Heavy runtime packages are imported through one helper each
(``edgeprune.core.backends.optional``: one line when the package is missing), never here.
"""

from __future__ import annotations

from typing import Protocol

from edgeprune.core.backends.runner import Runner, get_runner, runtime
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.timing import Timing, TimingPolicy


class TimedRunner(Runner, Protocol):
    """A runner that also times itself (every runtime's runner does)."""

    def time(self, policy: TimingPolicy | None = None) -> Timing: ...


class RunnerBase:
    """What every runner shares: ``threads`` and ``precision``, ``loaded()`` for what
    ``load()`` set, and ``timing()``: samples as a ``Timing`` tagged with the runner's
    name and version."""

    name: str

    def __init__(self, threads: int | None = None, precision: str = "fp32"):
        self.threads = threads
        self.precision = precision

    def version(self) -> str:
        raise NotImplementedError

    @staticmethod
    def loaded(value):
        """``value`` (what ``load()`` keeps); raises when no artifact was loaded yet."""
        if value is None:
            raise RuntimeError("load() an artifact first")
        return value

    @staticmethod
    def cannot_load(runtime: str, what: object, error: Exception, hint: str) -> EdgepruneError:
        """The one line for a runtime refusing an artifact (its own message, squashed)."""
        msg = " ".join(str(error).split())[:200]
        return EdgepruneError(f"{runtime} cannot load {what}: {msg}", hint)

    def timing(self, samples: list[float], threads: int | None = None, **extra) -> Timing:
        """``samples`` (ms) as this runner's ``Timing``; ``threads``: the count used when
        ``self.threads`` leaves it to the runtime; ``extra``: how it was timed."""
        return Timing.from_samples(
            samples,
            threads=threads or self.threads,
            runtime=self.name,
            runtime_version=self.version(),
            extra=extra,
        )


def device_options(device) -> dict:
    """The options ``device``'s descriptor sets for its runtime."""
    out = {}
    for key in runtime(device.runtime).device_options:
        value = getattr(device, key, None)
        if value is None:
            value = device.options.get(key)
        if value is not None:
            out[key] = value
    return out


def runner_for_device(device, threads: int | None = None, transport=None) -> TimedRunner:
    """The runner for ``device``'s runtime and precision, here or through ``transport``."""
    opts = device_options(device)
    if transport is not None:
        opts["transport"] = transport
    return get_runner(device.runtime, threads=threads, precision=device.precision, **opts)


class DeviceBinaryRunner(RunnerBase):
    """A runner that drives a runtime's own benchmark binary on the far side of a
    transport (``executor_runner``, ``onnxruntime_perf_test``): the transport, the
    binary's path (one line if the device descriptor names none), and one check, before
    the first run, that the device is ready and has the binary."""

    binary_name: str  # the binary, as messages name it
    build_hint: str  # how to build it for the device

    def __init__(
        self, transport, binary: str | None, threads: int | None = None, precision: str = "fp32"
    ):
        if not binary:
            raise MissingRuntimeError(
                f"no {self.binary_name} given for the device", self.build_hint
            )
        super().__init__(threads, precision)
        self.transport, self.binary = transport, binary
        self._checked = False

    def check_binary(self) -> None:
        if not self._checked:
            require_binary(self.transport, self.binary, self.binary_name, self.build_hint)
            self._checked = True


def require_binary(transport, path: str, what: str, hint: str) -> None:
    """The device behind ``transport`` is there and ready (its ``check``), and has the
    runtime's own binary at ``path`` (an absolute path, or a name on its PATH); one line
    (``MissingRuntimeError``, exit 2) with ``hint`` if not."""
    check = getattr(transport, "check", None)
    if check is not None:
        check()
    if "/" not in path and transport.which(path) is not None:
        return
    if transport.run(["test", "-x", path], timeout=30).returncode != 0:
        raise MissingRuntimeError(f"{what} not found at {path} on {transport.where}", hint)


def runtime_here(device) -> tuple[bool, str]:
    """Whether this machine can run ``device``'s runtime itself, and why (not)."""
    return runtime(device.runtime).available(**device_options(device))
