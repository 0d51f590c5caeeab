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
import signal
import subprocess
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from edgeprune.core.backends import executorch_kernels
from edgeprune.core.backends.executorch_kernels import needs_kernels, ready
from edgeprune.core.backends.optional import (
    EXECUTORCH_HINT,
    executorch_installed,
    import_executorch,
)
from edgeprune.core.backends.runner import Runtime
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.base import DeviceBinaryRunner, RunnerBase
from edgeprune.runtimes.timing import Timing, TimingPolicy, parse_ms, time_callable

BACKEND = "XnnpackBackend"
# ExecuTorch ScalarType codes of the input dtypes a .pte from edgeprune can have
_DTYPES = {6: np.float32, 5: np.float16, 4: np.int64, 3: np.int32}


def available(custom_kernels: bool = False, **_options) -> tuple[bool, str]:
    """Whether the ExecuTorch runtime with XNNPACK can run here (and, for a descriptor
    with ``custom_kernels``, edgeprune's kernels be built or loaded), and why not."""
    if not executorch_installed():
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
        raise EdgepruneError("the model is not an ExecuTorch program", PTE_HINT)
    data = bytes(artifact)
    try:
        method_names(data)
    except (ValueError, UnicodeDecodeError) as e:
        msg = f"the model is not a valid ExecuTorch program ({' '.join(str(e).split())[:120]})"
        raise EdgepruneError(msg, PTE_HINT) from None
    return data


PTE_HINT = "give a .pte file exported with 'edgeprune export --target executorch'"

# loads the program from stdin as ExecuTorchRunner.load does (verified, then its method;
# the bytes kept alive: the program points into them)
_PROBE = """
import sys
try:  # the runtime's binding alone: 1.5 names it _C, 1.4 _portable_lib
    from executorch.extension.pybindings import _C as pl
except ImportError:
    from executorch.extension.pybindings import _portable_lib as pl
data = sys.stdin.buffer.read()
program = pl._load_program_from_buffer(
    data, program_verification=pl.Verification.InternalConsistency
)
program.load_method("forward")
"""


def probe_program(data: bytes, timeout: float = 300.0) -> None:
    """Load ``data`` once in a child process (ExecuTorch's runtime alone: a fraction of
    a second) before this process does: a corrupt program can abort the process that
    loads it (the XNNPACK delegate logs names read from the damaged payload, and
    ExecuTorch's Python binding aborts on a log line that is not UTF-8), and that must
    end as one line, not take edgeprune down. Only the child dying is judged here; a
    program the runtime refuses is refused again, with its reason, by the real load."""
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE], input=data, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise EdgepruneError(
            f"the ExecuTorch runtime did not finish loading the program within {timeout:g} s",
            PTE_HINT,
        ) from None
    if res.returncode < 0:
        try:
            why = signal.Signals(-res.returncode).name
        except ValueError:
            why = f"signal {-res.returncode}"
        said = res.stderr.decode("utf-8", "replace").splitlines()
        said = [ln for ln in said if re.search(r"what\(\)|terminate|Error", ln)]
        if said:
            why += ": " + " ".join(said[-1].split())[:120]
        raise EdgepruneError(
            f"the model is not a valid ExecuTorch program: the ExecuTorch runtime "
            f"crashed loading it ({why})",
            PTE_HINT,
        )


def method_names(data: bytes) -> list[str]:
    """The method names a program's flatbuffer holds (``Program.execution_plan[i].name``),
    read with every offset bounds-checked: ExecuTorch's own loader verifies the buffer but
    then decodes these names in its Python binding, and a name that is not UTF-8 aborts
    the whole process there (``terminate called …``), so they are checked first. A
    ``ValueError`` (or ``UnicodeDecodeError``) when the buffer does not hold them."""

    def u32(pos: int, width: int = 4, signed: bool = False) -> int:
        if pos < 0 or pos + width > len(data):
            raise ValueError(f"an offset points outside the file ({pos})")
        return int.from_bytes(data[pos : pos + width], "little", signed=signed)

    def field(table: int, index: int) -> int | None:
        vtable = table - u32(table, signed=True)
        at = 4 + 2 * index
        off = u32(vtable + at, 2) if at + 2 <= u32(vtable, 2) else 0  # vtable: uint16s
        return table + off if off else None

    plans = field(u32(0), 1)  # Program.execution_plan
    if plans is None:
        return []
    vec = plans + u32(plans)
    count = u32(vec)
    if count > (len(data) - vec) // 4:
        raise ValueError(f"it claims {count} methods")
    names = []
    for k in range(count):
        elem = vec + 4 + 4 * k
        plan = elem + u32(elem)
        at = field(plan, 0)  # ExecutionPlan.name
        if at is None:
            names.append("")
            continue
        s = at + u32(at)
        n = u32(s)
        if s + 4 + n > len(data):
            raise ValueError("a method name runs past the end of the file")
        names.append(data[s + 4 : s + 4 + n].decode("utf-8"))
    return names


class ExecuTorchRunner(RunnerBase):
    """Load a .pte (path or bytes), run it, time it in the ExecuTorch runtime."""

    name = "executorch"

    def __init__(self, threads: int | None = None, precision: str = "fp32", **_options):
        ok, why = available()
        if not ok:
            raise MissingRuntimeError(
                f"the ExecuTorch runtime cannot run here: {why}", EXECUTORCH_HINT
            )
        super().__init__(threads, precision)
        self._method = None
        self._program = None

    def version(self) -> str:
        return version()

    def load(self, artifact: str | Path | bytes) -> None:
        from_file = not isinstance(artifact, bytes | bytearray)
        artifact = read_program(artifact)

        if executorch_kernels.needs_kernels(artifact):  # exported with --custom-kernels
            executorch_kernels.load()
        elif from_file:  # a file from outside: loaded once in a child process first
            probe_program(artifact)
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
        with _run_errors():
            outs = self.method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        return [o.numpy().copy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        feeds = self._inputs()
        method = self.method
        set_threads(self.threads)
        with _run_errors():
            samples = time_callable(lambda: method.execute(feeds), policy or TimingPolicy())
        return self.timing(samples, self.threads or thread_count(), backend=BACKEND)


@contextlib.contextmanager
def _run_errors():
    """A program that loaded but fails when run (a damaged one can: "Failed to get output
    type…") is one line, not an internal error."""
    try:
        yield
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:200]
        raise EdgepruneError(f"the ExecuTorch runtime failed running the program: {msg}") from None


# ---- on a device: ExecuTorch's executor_runner, driven through a transport (adb) ------
# the numbers are taken as printed (\S+) and checked by parse_ms: a time that is not a
# number, negative or NaN is an error, never skipped or averaged in
ITERATION_RE = r"Iteration (\d+) of (\d+): (\S+) ms"
TOTAL_RE = r"Model executed successfully (\S+) time\(s\) in (\S+) ms"
BUILD_HINT = (
    "build executor_runner for Android with XNNPACK (ExecuTorch's "
    "examples/xnnpack build, -DANDROID_ABI=arm64-v8a), push it to the phone and name its "
    "path in the device descriptor's executor_runner (README: Android)"
)

KERNELS_HINT = (
    "the program calls edgeprune's own kernels (exported with --custom-kernels): "
    "executor_runner must be built with edgeprune/core/backends/kernels/*.cpp (README: Android)"
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
        if executorch_installed():  # read from the program itself when ExecuTorch is here
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
        samples, note = samples_from_log(res.stdout + "\n" + res.stderr, p.warmup)
        extra = {"backend": BACKEND, "where": self.transport.where}
        if note:
            extra["note"] = note
        return self.timing(samples, **extra)


def samples_from_log(log: str, warmup: int) -> tuple[list[float], str | None]:
    """The timed runs (ms) of an executor_runner log after ``warmup`` runs, and a note
    when they are only the mean its summary line gives; one line when there is none or a
    number in it is not a time."""
    samples = parse_iterations(log)[warmup:]
    if samples:
        return samples, None
    total = parse_total(log)
    if total is None:
        raise EdgepruneError("executor_runner printed no timing")
    runs, ms = total
    return [ms / runs], "mean over runs (this executor_runner logs no per-iteration times)"


def parse_iterations(log: str) -> list[float]:
    """The per-iteration times (ms) of an executor_runner log, in order; one line
    (``EdgepruneError``) for a time that is not a finite number ≥ 0."""

    return [parse_ms(m.group(3), "executor_runner") for m in re.finditer(ITERATION_RE, log)]


def parse_total(log: str) -> tuple[int, float] | None:
    """(runs, total ms) of the log's ``Model executed successfully N time(s) in T ms``
    line; None without one; one line for a count below 1 or a bad time."""
    m = re.search(TOTAL_RE, log)
    if m is None:
        return None
    runs = m.group(1)
    if not (re.fullmatch(r"[0-9]{1,9}", runs) and int(runs) >= 1):
        raise EdgepruneError(
            f"executor_runner printed '{runs[:40]} time(s)' where a number of runs (≥ 1) "
            "was expected"
        )
    return int(runs), parse_ms(m.group(2), "executor_runner")


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
