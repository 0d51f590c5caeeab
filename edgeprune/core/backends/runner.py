"""The runner interface (after Polygraphy: a loader and a runner) and the registry of
runtimes, for whoever runs an artifact: export's parity check and the jobs.

    runner = get_runner("onnxruntime", threads=2)
    runner.load(artifact)              # path or bytes
    outputs = runner.run({"input": x}) # or runner.run(x) for one input

A runtime is one module of ``edgeprune.runtimes`` that defines its runner and
``RUNTIME = Runtime(...)`` (name, factory, availability check, the descriptor keys it
reads), named in ``RUNTIMES`` below. The registry holds module names, imported when a
runtime is asked for (``runtime(name)``): the core imports no runtime itself. Timing
(``runner.time(policy)``) is the runtimes' own: ``edgeprune.runtimes.base``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeprune.core.errors import EdgepruneError

# name -> the module that defines RUNTIME (imported when used)
RUNTIMES: dict[str, str] = {
    "onnxruntime": "edgeprune.runtimes.onnxruntime",
    "tensorrt": "edgeprune.runtimes.tensorrt.runner",
    "coreml": "edgeprune.runtimes.coreml",
    "executorch": "edgeprune.runtimes.executorch.runner",
}


class Runner(Protocol):
    """What every runtime's runner offers to run an artifact (its timing: see
    ``edgeprune.runtimes.base.TimedRunner``)."""

    name: str
    threads: int | None
    precision: str

    def version(self) -> str: ...

    def load(self, artifact: str | Path | bytes) -> None: ...

    def input_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]: ...


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
