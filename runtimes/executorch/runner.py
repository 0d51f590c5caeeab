"""ExecuTorch: load a ``.pte`` program (XNNPACK-delegated) in the ExecuTorch runtime on
this machine, run it and time it, with the XNNPACK thread pool set to ``threads``.

The thread pool is one per process (``_unsafe_reset_threadpool``), so a runner sets it
whenever it runs or times; two runners with different thread counts in one process
take turns, they do not share a setting silently.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import threading
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.base import DeviceBinaryRunner, RunnerBase, Runtime
from edgeprune.runtimes.executorch import INSTALL_HINT, import_executorch, installed
from edgeprune.runtimes.executorch import kernel_library as executorch_kernels
from edgeprune.runtimes.executorch.kernel_library import needs_kernels, ready
from edgeprune.runtimes.timing import Timing, TimingPolicy, time_callable

BACKEND = "XnnpackBackend"
# ExecuTorch ScalarType codes of the input dtypes a .pte from edgeprune can have
_DTYPES = {6: np.float32, 5: np.float16, 4: np.int64, 3: np.int32}


def available(custom_kernels: bool = False, **_options) -> tuple[bool, str]:
    """Whether the ExecuTorch runtime with XNNPACK can run here (and, for a descriptor
    with ``custom_kernels``, edgeprune's kernels be built or loaded), and why not."""
    if not installed():
        return False, "executorch not installed"
    try:
        rt = _runtime()
    except Exception as e:  # noqa: BLE001  (a wheel built against another torch fails here)
        return False, f"executorch does not load: {' '.join(str(e).split())[:120]}"
    if not rt.backend_registry.is_available(BACKEND):
        return False, f"executorch has no {BACKEND}"
    if custom_kernels:
        try:
            ok, why = ready()
        except EdgepruneError as e:
            ok, why = False, e.message
        if not ok:
            return False, why
        return True, f"executorch {version()} with XNNPACK and edgeprune's kernels"
    return True, f"executorch {version()} with XNNPACK"


def version() -> str:
    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _runtime():
    logging.getLogger("torchao").setLevel(logging.ERROR)
    # one thread at a time: redirecting sys.stdout is process-wide, and two threads that
    # interleave their redirects (`devices` checks descriptors in threads) can leave it
    # pointing at the other one's buffer
    quiet = contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO())
    with _IMPORT_LOCK, quiet[0], quiet[1]:
        return import_executorch("runtime").Runtime.get()


_IMPORT_LOCK = threading.Lock()


def set_threads(n: int | None) -> None:
    """Size the process's XNNPACK thread pool (None: leave it as it is)."""
    if not n:
        return
    portable_lib = _portable_lib()
    if portable_lib._threadpool_get_thread_count() != n:
        portable_lib._unsafe_reset_threadpool(int(n))


def thread_count() -> int:
    return int(_portable_lib()._threadpool_get_thread_count())


def _portable_lib():
    """executorch's pybindings: the runtime, its XNNPACK thread pool."""
    return import_executorch("extension.pybindings.portable_lib")


def read_program(artifact: str | Path | bytes) -> bytes:
    """The bytes of an ExecuTorch program (a path or the bytes), refused in one line
    when it is missing or not a program."""
    if not isinstance(artifact, bytes | bytearray):
        p = Path(artifact)
        if not p.is_file():
            raise EdgepruneError(f"artifact {artifact} does not exist")
        artifact = p.read_bytes()
    if bytes(artifact[4:8]) != b"ET12":
        raise EdgepruneError(
            "the model is not an ExecuTorch program",
            "give a .pte file exported with 'edgeprune export --target executorch'",
        )
    return bytes(artifact)


class ExecuTorchRunner(RunnerBase):
    """Load a .pte (path or bytes), run it, time it in the ExecuTorch runtime."""

    name = "executorch"

    def __init__(self, threads: int | None = None, precision: str = "fp32", **_options):
        ok, why = available()
        if not ok:
            raise MissingRuntimeError(
                f"the ExecuTorch runtime cannot run here: {why}", INSTALL_HINT
            )
        super().__init__(threads, precision)
        self._method = None
        self._program = None

    def version(self) -> str:
        return version()

    def load(self, artifact: str | Path | bytes) -> None:
        artifact = read_program(artifact)

        if executorch_kernels.needs_kernels(artifact):  # exported with --custom-kernels
            executorch_kernels.load()
        set_threads(self.threads)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                self._program = _runtime().load_program(bytes(artifact))
                self._method = self._program.load_method("forward")
        except Exception as e:  # noqa: BLE001  (the runtime raises RuntimeError/ValueError)
            hint = "was it exported for this executorch version?"
            raise self.cannot_load("ExecuTorch", "the program", e, hint) from None

    @property
    def method(self):
        return self.loaded(self._method)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        meta = self.method.metadata
        return {
            ("input" if i == 0 else f"input{i}"): tuple(meta.input_tensor_meta(i).sizes())
            for i in range(meta.num_inputs())
        }

    def _inputs(self, seed: int = 0) -> list:
        rng = np.random.default_rng(seed)
        meta = self.method.metadata
        feeds = []
        for i in range(meta.num_inputs()):
            tm = meta.input_tensor_meta(i)
            dt = _DTYPES.get(int(tm.dtype()), np.float32)
            feeds.append(torch.from_numpy(rng.standard_normal(tm.sizes()).astype(dt)))
        return feeds

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs.values())
        set_threads(self.threads)
        outs = self.method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        return [o.numpy().copy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        feeds = self._inputs()
        method = self.method
        set_threads(self.threads)
        samples = time_callable(lambda: method.execute(feeds), policy or TimingPolicy())
        return self.timing(samples, self.threads or thread_count(), backend=BACKEND)


# ---- on a device: ExecuTorch's executor_runner, driven through a transport (adb) ------
ITERATION_RE = r"Iteration (\d+) of (\d+): ([0-9.]+) ms"
TOTAL_RE = r"Model executed successfully (\d+) time\(s\) in ([0-9.]+) ms"
BUILD_HINT = (
    "build executor_runner for Android with XNNPACK (ExecuTorch's "
    "examples/xnnpack build, -DANDROID_ABI=arm64-v8a), push it to the phone and name its "
    "path in the device descriptor's executor_runner (README: Android)"
)

KERNELS_HINT = (
    "the program calls edgeprune's own kernels (exported with --custom-kernels): "
    "executor_runner must be built with runtimes/executorch/kernels/*.cpp (README: Android)"
)


class ExecutorRunnerRunner(DeviceBinaryRunner):
    """Time/run a .pte with ExecuTorch's ``executor_runner`` on the far side of a
    transport: the program is pushed to a fresh temporary folder, run there
    (``--num_executions``, ``--cpu_threads``), its per-iteration times are parsed from
    the log, outputs pulled back, and the folder removed."""

    name = "executorch"
    binary_name = "executor_runner"
    build_hint = BUILD_HINT

    _pte: bytes | None = None  # what load() read

    def version(self) -> str:
        return "executor_runner"

    def load(self, artifact: str | Path | bytes) -> None:
        self._pte = read_program(artifact)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        self.loaded(self._pte)
        if installed():  # read from the program itself when ExecuTorch is here
            local = ExecuTorchRunner()
            local.load(self._pte)
            return local.input_shapes()
        return {}

    def _invoke(self, extra: list[str], files: dict[str, bytes], pull: list[str]):
        self.check_binary()
        self.loaded(self._pte)
        t = self.transport
        with tempfile.TemporaryDirectory(prefix="edgeprune-et-") as ldir, t.tempdir() as rdir:
            local = Path(ldir)
            (local / "model.pte").write_bytes(self._pte)
            t.put(local / "model.pte", rdir)
            for name, data in files.items():
                (local / name).write_bytes(data)
                t.put(local / name, rdir)
            argv = [self.binary, f"--model_path={rdir}/model.pte", *extra]
            if self.threads:
                argv.append(f"--cpu_threads={int(self.threads)}")
            res = t.run(argv, cwd=rdir)
            if res.returncode != 0:
                text = (res.stderr or res.stdout).strip().splitlines()

                raise EdgepruneError(
                    f"executor_runner failed on {t.where}: "
                    f"{text[-1][:200] if text else f'exit {res.returncode}'}",
                    KERNELS_HINT if needs_kernels(self._pte) else None,
                )
            pulled = {}
            for name in pull:
                t.get(f"{rdir}/{name}", local / name)
                pulled[name] = (local / name).read_bytes()
        return res, pulled

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs.values())
        files = {f"input{i}.bin": np.ascontiguousarray(a).tobytes() for i, a in enumerate(arrays)}
        extra = [
            "--inputs=" + ",".join(f"input{i}.bin" for i in range(len(arrays))),
            "--output_file=output",
            "--print_output=none",
        ]
        _, pulled = self._invoke(extra, files, ["output-0.bin"])
        return [np.frombuffer(pulled["output-0.bin"], dtype=np.float32).copy()]

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        p = policy or TimingPolicy()
        n = max(p.min_runs, 1)
        res, _ = self._invoke([f"--num_executions={p.warmup + n}", "--print_output=none"], {}, [])
        samples = parse_iterations(res.stdout + "\n" + res.stderr)[p.warmup :]
        extra = {"backend": BACKEND, "where": self.transport.where}
        if not samples:
            total = parse_total(res.stdout + "\n" + res.stderr)
            if total is None:
                raise EdgepruneError("executor_runner printed no timing")
            runs, ms = total
            samples = [ms / runs]
            extra["note"] = "mean over runs (this executor_runner logs no per-iteration times)"
        return self.timing(samples, **extra)


def parse_iterations(log: str) -> list[float]:
    """The per-iteration times (ms) of an executor_runner log, in order."""

    return [float(m.group(3)) for m in re.finditer(ITERATION_RE, log)]


def parse_total(log: str) -> tuple[int, float] | None:
    m = re.search(TOTAL_RE, log)
    return (int(m.group(1)), float(m.group(2))) if m else None


def make(threads=None, precision="fp32", transport=None, executor_runner=None, **_options):
    """The runner: in this process, or ``executor_runner`` through a non-local transport."""
    if transport is not None and getattr(transport, "name", "local") != "local":
        return ExecutorRunnerRunner(transport, executor_runner, threads, precision)
    return ExecuTorchRunner(threads=threads, precision=precision)


# the pieces `profile` times and the models `validate-profile` times are lowered exactly
# as `export --target executorch` lowers a model (Target.module_artifact)
RUNTIME = Runtime(
    "executorch",
    make,
    available,
    # custom_kernels: pieces and models lowered with edgeprune's own kernels (profile)
    device_options=("executor_runner", "custom_kernels"),
    shells_out=True,
    target="executorch",
)
