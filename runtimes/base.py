"""The one interface every runtime offers (after Polygraphy: a loader and a runner).

    runner = get_runner("onnxruntime", threads=2)
    runner.load(artifact)              # path or bytes
    outputs = runner.run({"input": x}) # or runner.run(x) for one input
    timing = runner.time(policy)       # warm-up + timed runs on random inputs

Heavy runtime packages are imported inside each module's functions, never here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgeprune.errors import EdgepruneError
from edgeprune.runtimes.timing import Timing, TimingPolicy

RUNTIMES = ("onnxruntime", "tensorrt", "coreml")


class Runner(Protocol):
    name: str
    threads: int | None
    precision: str

    def version(self) -> str: ...

    def load(self, artifact: str | Path | bytes) -> None: ...

    def input_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]: ...

    def time(self, policy: TimingPolicy | None = None) -> Timing: ...


def random_inputs(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


def get_runner(
    runtime: str, threads: int | None = None, precision: str = "fp32", **options
) -> Runner:
    """A runner for ``runtime``; raises MissingRuntimeError when it cannot run here."""
    if runtime == "onnxruntime":
        from edgeprune.runtimes.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(threads=threads, precision=precision, **options)
    if runtime == "tensorrt":
        from edgeprune.runtimes.tensorrt import get_tensorrt_runner

        return get_tensorrt_runner(threads=threads, precision=precision, **options)
    if runtime == "coreml":
        from edgeprune.runtimes.coreml import CoreMLRunner

        return CoreMLRunner(threads=threads, precision=precision, **options)
    raise EdgepruneError(f"unknown runtime '{runtime}'", f"expected one of: {', '.join(RUNTIMES)}")
