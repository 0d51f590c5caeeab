"""TensorRT for export and for the timing runner: find a builder (the ``tensorrt`` Python
API, else ``trtexec``), build a serialized engine, run it for parity, and find trtexec and
read its version (here or through any transport). TensorRT is imported only through
``import_tensorrt`` (core/backends/optional.py). This is the one engine builder: export's
TensorRT target (export/tensorrt.py) and the timing runner (runtimes/tensorrt/runner.py)
both build through it.

TensorRT 10 builds FP16 from a float32 ONNX with ``BuilderFlag.FP16`` (``--fp16``);
TensorRT 11 is strongly typed only, so FP16 must already be in the ONNX.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.core.atomic import atomic_path
from edgeprune.core.backends.optional import import_tensorrt
from edgeprune.core.backends.process import run_killable
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError


@dataclass(frozen=True, kw_only=True)
class Builder:
    kind: str  # "api" or "trtexec"
    version: str  # "10.3.0", or "unknown"
    path: str | None = None  # trtexec's path

    @property
    def major(self) -> int:
        head = self.version.split(".")[0]
        return int(head) if head.isdigit() else 10

    def describe(self) -> dict:
        return {"kind": self.kind, "version": self.version, "path": self.path}


def find_builder() -> Builder | None:
    """The TensorRT Python API if it imports, else ``trtexec`` (on the PATH or where
    JetPack puts it), else None."""
    try:
        trt = import_tensorrt()
    except MissingRuntimeError:
        pass
    else:
        return Builder(kind="api", version=str(getattr(trt, "__version__", "unknown")))
    try:
        path = find_trtexec()
    except MissingRuntimeError:
        return None
    return Builder(kind="trtexec", version=trtexec_version(path), path=path)


def trtexec_version(path: str) -> str:
    """From trtexec's banner (``[TensorRT v100300]`` → ``10.3.0``), or ``unknown``."""
    v = probe_version(path)
    return ".".join(map(str, v)) if v else "unknown"


# ---- finding trtexec, its version --------------------------------------------------------
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


def find_trtexec(transport=None) -> str:
    """trtexec on the transport's PATH (None: this machine's), else where JetPack puts it."""
    which = shutil.which if transport is None else transport.which
    for cand in ("trtexec", JETPACK_TRTEXEC):
        found = which(cand)
        if found:
            return found
    where = "this machine" if transport is None else transport.where
    here = transport is None or transport.name == "local"
    raise MissingRuntimeError(
        f"TensorRT is not available on {where}: no trtexec on PATH (nor {JETPACK_TRTEXEC})"
        + (" and no 'tensorrt' Python package" if here else ""),
        "on a Jetson it comes with JetPack; elsewhere install TensorRT from NVIDIA, "
        "or profile the device over SSH with --host",
    )


def parse_trtexec_version(text: str) -> tuple[int, int, int] | None:
    """TensorRT version from trtexec's banner: ``[TensorRT v100300]`` is 10.3.0
    (8.x wrote ``v8601`` for 8.6.1)."""
    m = re.search(r"TensorRT v([0-9]{1,9})\b", text)
    if m:
        n = int(m.group(1))
        if n >= 100000:  # 10.x and later: MMmmpp
            return n // 10000, (n // 100) % 100, n % 100
        return n // 1000, (n // 100) % 10, n % 100
    m = re.search(r"TensorRT version:?\s*([0-9]{1,6})\.([0-9]{1,6})\.([0-9]{1,6})\b", text)
    if m:
        return int(m.group(1)), int(m.group(2)), int(m.group(3))
    return None


def probe_version(trtexec: str, transport=None) -> tuple[int, int, int] | None:
    """Run ``trtexec --help`` (here or through ``transport``) and read its version;
    None when it cannot be run or says none."""
    argv = [trtexec, "--help"]
    try:
        if transport is None:
            res = run_killable(argv, 60, trtexec)
        else:
            res = transport.run(argv, timeout=60)
    except (OSError, EdgepruneError):
        return None
    return parse_trtexec_version(res.stdout + res.stderr)


# ---- running an engine through trtexec ---------------------------------------------------
def run_trtexec(cmd: list[str], what: str, timeout: float = 3600) -> str:
    """trtexec in its own process group (``run_killable``): at ``timeout`` the whole group
    is killed, and a failure is one line with the last lines trtexec printed."""
    res = run_killable(
        cmd, timeout, f"trtexec ({what})", "raise the limit, or check the device's load"
    )
    if res.returncode != 0:
        tail = " | ".join((res.stdout + res.stderr).strip().splitlines()[-3:])
        raise EdgepruneError(
            f"trtexec failed while {what} (exit {res.returncode}): {tail}", exit_code=1
        )
    return res.stdout


class TrtexecEngineRunner:
    """Runs an engine through ``trtexec --loadInputs --exportOutput`` (no Python API
    needed); returns None from ``__call__`` when this trtexec produced no output file."""

    def __init__(
        self, trtexec: str, engine: Path, input_name: str, output_name: str, dynamic: bool
    ):
        self.trtexec, self.engine, self.dynamic = trtexec, engine, dynamic
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        with tempfile.TemporaryDirectory(prefix="edgeprune-trt-") as d:
            inp, outp = Path(d) / "input.bin", Path(d) / "output.json"
            np.ascontiguousarray(x, dtype=np.float32).tofile(inp)
            shape = "x".join(map(str, x.shape))
            cmd = [
                self.trtexec,
                f"--loadEngine={self.engine}",
                f"--loadInputs={self.input_name}:{inp}",
                f"--exportOutput={outp}",
                "--iterations=1",
                "--warmUp=0",
                "--duration=0",
            ]
            if self.dynamic:  # a static engine takes no --shapes
                cmd.append(f"--shapes={self.input_name}:{shape}")
            run_trtexec(cmd, "running the engine")
            if not outp.exists():
                return None
            return parse_exported_output(outp, self.output_name)


def parse_exported_output(path: Path, name: str) -> np.ndarray:
    """trtexec ``--exportOutput``: ``[{"name", "dimensions": "1x1000", "values": [...]}]``."""
    data = json.loads(Path(path).read_text())
    for entry in data:
        if entry.get("name") == name:
            dims = [int(d) for d in str(entry["dimensions"]).split("x") if d]
            return np.asarray(entry["values"], dtype=np.float32).reshape(dims)
    raise EdgepruneError(f"trtexec output has no tensor '{name}'", exit_code=1)


# ---- the Python API ----------------------------------------------------------------------
def build_engine_api(
    onnx_bytes: bytes,
    precision: str,
    *,
    workspace_mib: int = 1024,
    input_name: str = "input",
    chw: tuple[int, int, int] | None = None,
    dynamic_batch: tuple[int, int, int] | None = None,
    timing_cache: Path | None = None,
) -> bytes:
    """Build a serialized engine with the TensorRT API (10: FP16 builder flag; 11:
    strongly typed, the ONNX given must already be FP16). ``dynamic_batch`` (MIN, OPT,
    MAX) with ``chw``: an optimization profile for ``input_name``; ``timing_cache``: a
    file read before the build and written after it."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    network, _parser = _parse_onnx(trt, builder, logger, onnx_bytes, major)  # parser: kept
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if dynamic_batch is not None and chw is not None:
        profile = builder.create_optimization_profile()
        lo, opt, hi = ((b, *chw) for b in dynamic_batch)
        profile.set_shape(input_name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        old = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(old)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgepruneError("TensorRT failed to build the engine (see its log)", exit_code=1)
    if cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _parse_onnx(trt, builder, logger, onnx_bytes: bytes, major: int):
    """The network of ``onnx_bytes`` (explicit batch) and its parser; one line when
    TensorRT's parser refuses the graph."""
    flags = 0
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgepruneError(f"TensorRT could not parse the ONNX: {errs}", exit_code=1)
    # the parser owns the weights the network refers to: it must outlive the build
    return network, parser


class ApiRunner:
    """Runs a serialized engine on the GPU (CUDA buffers through torch)."""

    def __init__(self, engine_bytes: bytes, input_name: str, output_name: str):
        self.trt = trt = import_tensorrt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise EdgepruneError("TensorRT could not load the engine it built", exit_code=1)
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ctx = self.context
        ctx.set_input_shape(self.input_name, tuple(x.shape))
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        shape = tuple(ctx.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=torch.float32, device="cuda")
        ctx.set_tensor_address(self.input_name, inp.data_ptr())
        ctx.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise EdgepruneError("TensorRT failed to run the engine", exit_code=1)
        stream.synchronize()
        return out.cpu().numpy()
