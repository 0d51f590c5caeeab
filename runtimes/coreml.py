"""CoreML: predictions and timing through coremltools, which can only run models on
macOS (conversion works anywhere; see edgeprune.export). Elsewhere: a clear error.
coremltools (heavy) is imported through ``core.backends.optional.import_coremltools``."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from edgeprune.core.backends.optional import import_coremltools
from edgeprune.core.backends.runner import Runtime
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.base import RunnerBase
from edgeprune.runtimes.timing import Timing, TimingPolicy, time_callable


def check_available() -> None:
    if platform.system() != "Darwin":
        raise MissingRuntimeError(
            f"CoreML needs macOS to run a model (this is {platform.system()})",
            "run 'edgeprune profile --device iphone' on a Mac, or over SSH to one with --host",
        )
    import_coremltools()


class CoreMLRunner(RunnerBase):
    name = "coreml"

    def __init__(
        self, threads: int | None = None, precision: str = "fp16", compute_units: str = "ALL"
    ):
        check_available()
        super().__init__(threads, precision)
        self.compute_units = compute_units
        self._model = None
        self._path: str | None = None

    def version(self) -> str:
        return import_coremltools().__version__

    def load(self, artifact: str | Path | bytes) -> None:
        ct = import_coremltools()
        if isinstance(artifact, bytes):
            raise EdgepruneError("CoreML models are loaded from an .mlpackage path")
        self._path = str(artifact)
        units = getattr(ct.ComputeUnit, self.compute_units)
        self._model = ct.models.MLModel(self._path, compute_units=units)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        spec = self._model.get_spec()
        return {
            i.name: tuple(int(d) for d in i.type.multiArrayType.shape)
            for i in spec.description.input
        }

    def run(self, inputs):
        if isinstance(inputs, np.ndarray):
            inputs = {next(iter(self.input_shapes())): inputs}
        return list(self._model.predict(inputs).values())

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        ct = import_coremltools()
        policy = policy or TimingPolicy()
        feeds = {
            k: np.random.default_rng(0).standard_normal(s).astype(np.float32)
            for k, s in self.input_shapes().items()
        }
        bench = getattr(getattr(ct.models, "utils", None), "MLModelBenchmarker", None)
        via = "MLModel.predict"
        if bench is not None:  # coremltools ≥ 8.3
            try:
                b = bench(model=self._model)
                res = b.benchmark_predict(iterations=policy.min_runs, warmup=True)
                samples = [float(x) for x in getattr(res, "samples", [])]
                if samples:
                    via = "MLModelBenchmarker"
            except Exception:
                samples = []
        else:
            samples = []
        if not samples:
            samples = time_callable(lambda: self._model.predict(feeds), policy)
        return self.timing(samples, via=via, compute_units=self.compute_units)


def available(**_options) -> tuple[bool, str]:
    try:
        check_available()
    except MissingRuntimeError as e:
        return False, e.message
    return True, "coremltools installed"


RUNTIME = Runtime("coreml", CoreMLRunner, available, device_options=("compute_units",))
