"""TensorRT: the ``tensorrt`` Python API where importable, else ``trtexec``.

TensorRT 10 (JetPack 6.x) builds FP16 with ``BuilderFlag.FP16`` / ``trtexec --fp16``.
TensorRT 11 is strongly typed only: no precision flags exist, so FP16 must already be
in the ONNX (its weights and activations typed float16). Both are handled here.

``trtexec --exportTimes=FILE`` writes a JSON array with one object per inference
(warm-up included), e.g. ``{"startEnqMs": …, "endEnqMs": …, "startH2dMs": …,
"endH2dMs": …, "startComputeMs": …, "endComputeMs": …, "startD2hMs": …, "endD2hMs": …,
"h2dMs": …, "computeMs": …, "d2hMs": …, "latencyMs": …, "endToEndMs": …}``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import onnx
import torch

from edgeprune.core.backends.optional import import_tensorrt
from edgeprune.core.backends.runner import Runtime
from edgeprune.core.backends.tensorrt import build_engine_api, find_trtexec, probe_version
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.base import RunnerBase
from edgeprune.runtimes.timing import Timing, TimingPolicy, time_callable
from edgeprune.runtimes.transports.local import LocalTransport

_NONFINITE = re.compile(r"(?<![\w\"])-?(nan|inf)(?![\w\"])", re.IGNORECASE)


# ---- trtexec output ----------------------------------------------------------------
def parse_export_times(text: str, warmup_ms: float = 0.0, metric: str = "latencyMs") -> list[float]:
    """Per-inference times (ms) from ``--exportTimes`` JSON, dropping the warm-up
    (inferences whose compute started before ``warmup_ms``, as trtexec's own report does)."""
    try:
        data = json.loads(_NONFINITE.sub("null", text))
    except json.JSONDecodeError as e:
        raise EdgepruneError(f"trtexec --exportTimes output is not JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise EdgepruneError("trtexec --exportTimes output is not a JSON array")
    rows = [r for r in data if isinstance(r, dict) and metric in r]
    if warmup_ms > 0:
        start = "startComputeMs"
        rows = [r for r in rows if _ms(r.get(start) or 0.0, start) >= warmup_ms]
    # every inference's time is a finite number ≥ 0 (a NaN, read as null above, included):
    # one that is not is an error, never dropped from the samples
    out = [_ms(r[metric], metric) for r in rows]
    if not out:
        raise EdgepruneError(f"trtexec --exportTimes output holds no '{metric}' values")
    return out


def _ms(value: object, name: str) -> float:
    """A time from --exportTimes: a finite number ≥ 0, else one line."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        v = float(value) if number else math.nan
    except OverflowError:  # an integer beyond any float
        v = math.inf
    if not (math.isfinite(v) and v >= 0):
        shown = "NaN" if value is None else repr(value)[:40]  # (its nan was read as null)
        raise EdgepruneError(f"trtexec --exportTimes output has {name} {shown}: not a time in ms")
    return v


def trtexec_argv(
    trtexec: str,
    onnx: str,
    times_file: str,
    precision: str,
    major: int,
    policy: TimingPolicy,
) -> list[str]:
    """The trtexec command line for one timing run, for TensorRT ``major``."""
    argv = [
        trtexec,
        f"--onnx={onnx}",
        f"--exportTimes={times_file}",
        "--warmUp=200",
        f"--iterations={max(policy.min_runs, 1)}",
        f"--duration={max(int(round(policy.min_time_s)), 0)}",
        "--noDataTransfers",
        "--useSpinWait",
    ]
    if precision not in ("fp32", "fp16", "int8", "best"):
        raise EdgepruneError(f"unknown precision '{precision}'", "expected fp32 or fp16")
    if major >= 11:
        # strongly typed only: the ONNX carries its own types; no --fp16/--int8 flags exist
        pass
    elif precision == "fp16":
        argv.append("--fp16")
    elif precision == "int8":
        argv.append("--int8")
    elif precision == "best":
        argv.append("--best")
    return argv


def onnx_is_fp16(path_or_bytes: str | Path | bytes) -> bool:
    proto = (
        onnx.load_from_string(path_or_bytes)
        if isinstance(path_or_bytes, bytes)
        else onnx.load(str(path_or_bytes), load_external_data=False)
    )
    fp16 = onnx.TensorProto.FLOAT16
    return any(t.data_type == fp16 for t in proto.graph.initializer)


def _check_strong_typing(major: int, precision: str, artifact: str | Path | bytes) -> None:
    if major >= 11 and precision == "fp16" and not onnx_is_fp16(artifact):
        raise EdgepruneError(
            f"TensorRT {major} is strongly typed: FP16 must be in the ONNX itself, "
            "and this model is float32",
            "export a float16 ONNX, or profile this device with precision fp32",
        )


# ---- runners -----------------------------------------------------------------------
class TrtexecRunner(RunnerBase):
    """Times an ONNX with ``trtexec`` over a transport (local or SSH)."""

    name = "tensorrt"

    def __init__(
        self,
        threads: int | None = None,
        precision: str = "fp16",
        trtexec: str | None = None,
        transport=None,
        timeout: float = 600.0,
    ):

        self.transport = transport or LocalTransport()
        super().__init__(threads, precision)
        self.timeout = timeout
        self.trtexec = trtexec or find_trtexec(self.transport)
        self._artifact: str | Path | bytes | None = None
        self._version: tuple[int, int, int] | None = None

    def _probe_version(self) -> tuple[int, int, int]:
        if self._version is None:
            self._version = probe_version(self.trtexec, self.transport) or (10, 0, 0)
        return self._version

    def version(self) -> str:
        return ".".join(map(str, self._probe_version()))

    def load(self, artifact: str | Path | bytes) -> None:
        self._artifact = artifact

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def run(self, inputs):
        raise EdgepruneError("trtexec times engines but does not return outputs")

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        self.loaded(self._artifact)
        policy = policy or TimingPolicy()
        major = self._probe_version()[0]
        _check_strong_typing(major, self.precision, self._artifact)
        with tempfile.TemporaryDirectory(prefix="edgeprune-trt-") as local_dir:
            local = Path(local_dir) / "model.onnx"
            if isinstance(self._artifact, bytes):
                local.write_bytes(self._artifact)
            else:
                shutil.copyfile(self._artifact, local)
            with self.transport.tempdir() as rdir:
                remote_onnx = self.transport.put(local, rdir)
                times = f"{rdir}/times.json"
                argv = trtexec_argv(self.trtexec, remote_onnx, times, self.precision, major, policy)
                res = self.transport.run(argv, timeout=self.timeout, cwd=rdir)
                if res.returncode != 0:
                    tail = " ".join((res.stdout + res.stderr).split())[-240:]
                    raise EdgepruneError(f"trtexec failed (exit {res.returncode}): {tail}")
                self.transport.get(times, Path(local_dir) / "times.json")
            samples = parse_export_times((Path(local_dir) / "times.json").read_text(), 200.0)
        return self.timing(samples, via="trtexec", where=self.transport.where)


class TensorRTPythonRunner(RunnerBase):
    """Builds an engine with the ``tensorrt`` Python API and times it (CUDA via torch)."""

    name = "tensorrt"

    def __init__(self, threads: int | None = None, precision: str = "fp16"):
        self.trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise MissingRuntimeError(
                "the tensorrt package is installed but no CUDA device is visible to torch",
                "run on the GPU machine (or a Jetson), or use trtexec",
            )
        super().__init__(threads, precision)
        self._engine = None
        self._shapes: dict[str, tuple[int, ...]] = {}

    def version(self) -> str:
        return self.trt.__version__

    def load(self, artifact: str | Path | bytes) -> None:
        trt = self.trt
        major = int(trt.__version__.split(".")[0])
        _check_strong_typing(major, self.precision, artifact)
        data = artifact if isinstance(artifact, bytes) else Path(artifact).read_bytes()
        blob = build_engine_api(data, self.precision, workspace_mib=1024)
        logger = trt.Logger(trt.Logger.ERROR)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
        if self._engine is None:
            raise EdgepruneError("TensorRT could not load the engine it built")
        self._shapes = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            self._shapes[name] = tuple(self._engine.get_tensor_shape(name))

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        e, io_input = self._engine, self.trt.TensorIOMode.INPUT
        return {n: s for n, s in self._shapes.items() if e.get_tensor_mode(n) == io_input}

    def _context(self):
        trt = self.trt
        ctx = self._engine.create_execution_context()
        bufs = {}
        for name, shape in self._shapes.items():
            dt = trt.nptype(self._engine.get_tensor_dtype(name))
            tdt = {"float16": torch.float16, "int64": torch.int64, "int32": torch.int32}.get(
                dt.__name__, torch.float32
            )
            bufs[name] = torch.randn(shape, device="cuda").to(tdt)
            ctx.set_tensor_address(name, bufs[name].data_ptr())
        return ctx, bufs

    def run(self, inputs):
        ctx, bufs = self._context()
        if not isinstance(inputs, dict):
            inputs = {next(iter(self.input_shapes())): inputs}
        for k, v in inputs.items():
            bufs[k].copy_(torch.as_tensor(v))
        stream = torch.cuda.current_stream()
        ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        outs = [n for n in self._shapes if n not in self.input_shapes()]
        return [bufs[n].float().cpu().numpy() for n in outs]

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        ctx, _bufs = self._context()
        stream = torch.cuda.current_stream()

        def once() -> None:
            ctx.execute_async_v3(stream.cuda_stream)
            stream.synchronize()

        samples = time_callable(once, policy or TimingPolicy())
        return self.timing(samples, via="tensorrt-python")


def get_tensorrt_runner(threads: int | None = None, precision: str = "fp16", transport=None, **kw):
    """The Python API where importable (locally), else trtexec (locally or over SSH)."""
    if transport is None or transport.name == "local":
        try:
            import_tensorrt()
        except MissingRuntimeError:
            pass
        else:
            return TensorRTPythonRunner(threads=threads, precision=precision)
    return TrtexecRunner(threads=threads, precision=precision, transport=transport, **kw)


def available(trtexec: str | None = None, **_options) -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is not None:
        return True, "tensorrt Python package"
    for cand in ("trtexec", trtexec):
        if cand and shutil.which(cand):
            return True, f"trtexec at {shutil.which(cand)}"
    return False, "no tensorrt package, no trtexec"


RUNTIME = Runtime(
    "tensorrt", get_tensorrt_runner, available, device_options=("trtexec",), shells_out=True
)
