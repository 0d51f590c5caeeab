"""The one interface every runtime offers (after Polygraphy: a loader and a runner),
and the registry of runtimes.

    runner = get_runner("onnxruntime", threads=2)
    runner.load(artifact)              # path or bytes
    outputs = runner.run({"input": x}) # or runner.run(x) for one input
    timing = runner.time(policy)       # warm-up + timed runs on random inputs

A new runtime is one module that defines its runner and ``RUNTIME = Runtime(...)``
(name, factory, availability check, the descriptor keys it reads), plus one line in
``RUNTIMES`` below. Heavy runtime packages are imported through one helper each
(``import_tensorrt``, ``import_coremltools``, ``import_executorch``: one line when the
package is missing), never here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.timing import Timing, TimingPolicy

# name -> the module that defines RUNTIME (imported when used)
RUNTIMES: dict[str, str] = {
    "onnxruntime": "edgeprune.runtimes.onnxruntime",
    "tensorrt": "edgeprune.runtimes.tensorrt.runner",
    "coreml": "edgeprune.runtimes.coreml",
    "executorch": "edgeprune.runtimes.executorch.runner",
}


class Runner(Protocol):
    name: str
    threads: int | None
    precision: str

    def version(self) -> str: ...

    def load(self, artifact: str | Path | bytes) -> None: ...

    def input_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]: ...

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


@dataclass(frozen=True)
class Runtime:
    """A registered runtime.

    ``make(threads=, precision=, **options)`` builds a runner and raises
    ``MissingRuntimeError`` when it cannot run; ``available(**options)`` says cheaply
    (no model loaded) whether it can run on this machine, and why not.
    ``device_options``: descriptor keys passed on as options (e.g. ``compute_units``).
    ``shells_out``: its runner takes ``transport=`` and runs through any transport
    (local, ssh, adb…); the others run in this process.
    ``target``: the export target (``export/targets.py``) whose artifacts the runner
    loads: what ``profile`` lowers its pieces to and ``validate-profile`` exports to."""

    name: str
    make: Callable[..., Runner]
    available: Callable[..., tuple[bool, str]]
    device_options: tuple[str, ...] = ()
    shells_out: bool = False
    target: str = "onnx"


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise EdgepruneError(f"unknown runtime '{name}'", f"expected one of: {', '.join(RUNTIMES)}")
    return importlib.import_module(RUNTIMES[name]).RUNTIME


def get_runner(
    runtime_name: str, threads: int | None = None, precision: str = "fp32", **options
) -> Runner:
    """A runner for ``runtime_name``; raises MissingRuntimeError when it cannot run here.
    ``transport=`` (a runtime that shells out) runs it through that transport."""
    rt = runtime(runtime_name)
    transport = options.get("transport")
    if transport is not None and transport.name != "local" and not rt.shells_out:
        raise EdgepruneError(
            f"the {rt.name} runner runs in this process and cannot go through "
            f"transport {transport.name}",
            'use remote_runner = "edgeprune" in the device descriptor',
        )
    if not rt.shells_out:
        options.pop("transport", None)
    return rt.make(threads=threads, precision=precision, **options)


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


def runner_for_device(device, threads: int | None = None, transport=None) -> Runner:
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
