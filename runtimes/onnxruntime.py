"""ONNX Runtime: sessions with a fixed thread count, run, and timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.base import RunnerBase, Runtime
from edgeprune.runtimes.timing import Timing, TimingPolicy, time_callable


def version() -> str:
    import onnxruntime as ort

    return ort.__version__


def make_session(
    model: str | Path | bytes,
    threads: int | None = None,
    providers: list[str] | None = None,
    optimization: str = "all",
):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=providers or ["CPUExecutionProvider"])


def run(session, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class OnnxRuntimeRunner(RunnerBase):
    """Load an .onnx (path or bytes), run it, time it, on the chosen execution provider."""

    name = "onnxruntime"

    def __init__(
        self,
        threads: int | None = None,
        precision: str = "fp32",
        provider: str = "CPUExecutionProvider",
        optimization: str = "all",
    ):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingRuntimeError(
                "onnxruntime is not installed", "pip install onnxruntime"
            ) from None
        if provider not in ort.get_available_providers():
            raise MissingRuntimeError(
                f"onnxruntime here has no {provider}",
                f"available: {', '.join(ort.get_available_providers())}",
            )
        super().__init__(threads, precision)
        self.provider = provider
        self.optimization = optimization
        self._session = None

    def version(self) -> str:
        return version()

    def load(self, artifact: str | Path | bytes) -> None:
        if not isinstance(artifact, bytes) and not Path(artifact).is_file():
            raise EdgepruneError(f"artifact {artifact} does not exist")
        try:
            self._session = make_session(artifact, self.threads, [self.provider], self.optimization)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            what = "the model" if isinstance(artifact, bytes) else artifact
            hint = "is it an .onnx file exported by 'edgeprune export'?"
            raise self.cannot_load("onnxruntime", what, e, hint) from None

    @property
    def session(self):
        return self.loaded(self._session)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for i in self.session.get_inputs():
            if any(not isinstance(d, int) for d in i.shape):
                raise EdgepruneError(
                    f"input '{i.name}' has a dynamic shape {i.shape}",
                    "edgeprune times static graphs; export with a fixed batch",
                )
            out[i.name] = tuple(i.shape)
        return out

    def _inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feeds = {}
        for i in self.session.get_inputs():
            dt = _DTYPES.get(i.type, np.float32)
            feeds[i.name] = rng.standard_normal(self.input_shapes()[i.name]).astype(dt)
        return feeds

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.session.get_inputs()[0].name: inputs}
        return self.session.run(None, inputs)

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        feeds = self._inputs()
        sess = self.session
        samples = time_callable(lambda: sess.run(None, feeds), policy or TimingPolicy())
        return self.timing(samples, provider=self.provider)


def available(**_options) -> tuple[bool, str]:
    import importlib.util

    ok = importlib.util.find_spec("onnxruntime") is not None
    return ok, "onnxruntime installed" if ok else "onnxruntime not installed"


RUNTIME = Runtime("onnxruntime", OnnxRuntimeRunner, available)
