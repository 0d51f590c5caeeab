"""ONNX Runtime: sessions with a fixed thread count, run, and timing, in this process;
on a device reached through a transport (a phone over adb), onnxruntime's own benchmark
binary ``onnxruntime_perf_test`` times ``.onnx`` and ``.ort`` models there."""

from __future__ import annotations

import bisect
import contextlib
import importlib.util
import io
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgeprune.core.backends.runner import Runtime
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.base import DeviceBinaryRunner, RunnerBase
from edgeprune.runtimes.timing import Timing, TimingPolicy, parse_ms, time_callable


def version() -> str:
    return ort.__version__


# A session's intra-op pool keeps its workers busy-waiting ("spinning") for a while after
# each run. Two sessions timed in turn in one process (dense and pruned, interleaved)
# then fight: the pool that just finished spins on a core the other one needs. On a
# 2-core machine at 2 threads (DeiT-T dense against DynamicViT/0.7, 60 interleaved
# pairs, onnxruntime 1.32) dense measured 42 ms (p10-p90: 35-53 ms) with the default
# pools, and 20.5 ms (19.6-21.6 ms) with each pool told to stop spinning when its run
# returns. Each model timed alone takes the same with or without it: workers still
# spin between the ops of a run. One thread has no pool to spin.
STOP_SPINNING = ("session.force_spinning_stop", "1")


def make_session(
    model: str | Path | bytes,
    threads: int | None = None,
    providers: list[str] | None = None,
    optimization: str = "all",
    options=None,
):
    """A session on ``model``; ``options``: SessionOptions to start from (profiling)."""
    so = options or ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if threads != 1:
        so.add_session_config_entry(*STOP_SPINNING)
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


def run_checked(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run``; a graph that loaded but fails in a kernel (a damaged file: a
    negative TopK k, a MatMul of scalars) is one line, not onnxruntime's exception."""
    try:
        return session.run(None, feeds)
    except Exception as e:  # noqa: BLE001  (onnxruntime's Fail, InvalidArgument, ... types)
        msg = " ".join(str(e).split())[:200]
        raise EdgepruneError(
            f"onnxruntime cannot run the model: {msg}",
            "a damaged graph can load and still fail to run: re-export it",
        ) from None


def run(session, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def random_feeds(session, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs of ``session``'s (static) input shapes and types."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = tuple(d if isinstance(d, int) else 1 for d in i.shape)
        feeds[i.name] = rng.standard_normal(shape).astype(_DTYPES.get(i.type, np.float32))
    return feeds


LOAD_HINT = "is it an .onnx file exported by 'edgeprune export'?"


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
        try:  # (its Python wrapper prints "EP Error … Falling back" to stdout: kept off it)
            with contextlib.redirect_stdout(io.StringIO()):
                self._session = make_session(
                    artifact, self.threads, [self.provider], self.optimization
                )
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            what = "the model" if isinstance(artifact, bytes) else artifact
            raise self.cannot_load("onnxruntime", what, e, LOAD_HINT) from None

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
        self.input_shapes()  # refuses a dynamic shape
        return random_feeds(self.session, seed)

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = {self.session.get_inputs()[0].name: inputs}
        return run_checked(self.session, inputs)

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        feeds = self._inputs()
        sess = self.session
        run_checked(sess, feeds)  # a graph that loads but cannot run: one line, first
        samples = time_callable(lambda: sess.run(None, feeds), policy or TimingPolicy())
        return self.timing(samples, provider=self.provider)


def available(**_options) -> tuple[bool, str]:
    ok = importlib.util.find_spec("onnxruntime") is not None
    return ok, "onnxruntime installed" if ok else "onnxruntime not installed"


# ---- a per-operator profile: onnxruntime's own session profiler --------------------------
@dataclass(kw_only=True)
class SessionProfile:
    """What onnxruntime's session profiler saw over ``runs`` timed runs (after the
    warm-up runs, which are dropped): ``nodes``, one ``(run, node name, op kind, µs)`` per
    node run; ``run_us``, each run's ``model_run`` time (the node times plus the session's
    own per-run work); ``graph``, the graph as the session runs it (after onnxruntime's
    fusions: the names of ``nodes`` are its node names), None when it cannot be saved (an
    .ort model); ``inputs``: the input shapes."""

    nodes: list[tuple[int, str, str, float]]
    run_us: list[float]
    graph: onnx.ModelProto | None
    threads: int | None
    version: str
    inputs: dict[str, tuple[int, ...]]


def profile_session(
    artifact: str | Path | bytes, threads: int | None = None, runs: int = 20, warmup: int = 3
) -> SessionProfile:
    """Run ``artifact`` ``warmup + runs`` times on random inputs with the session profiler
    on (``SessionOptions.enable_profiling``) and read its Chrome-trace file back; the trace
    and the optimized graph are written to a temporary folder, removed on return."""
    if not isinstance(artifact, bytes) and not Path(artifact).is_file():
        raise EdgepruneError(f"artifact {artifact} does not exist")
    with tempfile.TemporaryDirectory(prefix="edgeprune-ops-") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_profile")
        optimized = Path(tmp) / "optimized.onnx"
        if not _is_ort_format(artifact):
            so.optimized_model_filepath = str(optimized)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                sess = make_session(artifact, threads, options=so)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            what = "the model" if isinstance(artifact, bytes) else artifact
            raise OnnxRuntimeRunner.cannot_load("onnxruntime", what, e, LOAD_HINT) from None
        feeds = random_feeds(sess)
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        for _ in range(warmup + runs):
            sess.run(None, feeds)
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink(missing_ok=True)
        graph = onnx.load(str(optimized), load_external_data=False) if optimized.is_file() else None
    nodes, run_us = node_times(events, warmup)
    return SessionProfile(
        nodes=nodes, run_us=run_us, graph=graph, threads=threads, version=version(), inputs=shapes
    )


def _is_ort_format(artifact: str | Path | bytes) -> bool:
    """An ORT-format (flatbuffer) model: already optimized, not savable as ONNX."""
    if isinstance(artifact, bytes | bytearray):
        return bytes(artifact[4:8]) == b"ORTM"
    with open(artifact, "rb") as f:
        return f.read(8)[4:8] == b"ORTM"


NodeRun = tuple[int, str, str, float]  # (run, node name, op kind, µs)


def node_times(events: list[dict], warmup: int) -> tuple[list[NodeRun], list[float]]:
    """The node runs and the per-run times (µs) of a session profiler trace, the first
    ``warmup`` runs dropped. A node run belongs to the ``model_run`` event whose span
    holds it; ``NAME_kernel_time`` events only (older versions also write zero-length
    ``_fence_before``/``_fence_after`` ones)."""
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[warmup:]
    starts = [a for a, _ in spans]
    nodes, suffix = [], "_kernel_time"
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith(suffix):
            continue
        run = bisect.bisect_right(starts, e["ts"]) - 1
        if run >= 0 and e["ts"] <= spans[run][1]:
            kind = (e.get("args") or {}).get("op_name", "?")
            nodes.append((run, e["name"][: -len(suffix)], kind, float(e["dur"])))
    return nodes, [float(b - a) for a, b in spans]


# ---- on a device: onnxruntime_perf_test, driven through a transport (adb, ssh) -------
PERF_TEST = "onnxruntime_perf_test"
BUILD_HINT = (
    "build onnxruntime_perf_test for Android (onnxruntime's ./build.sh --android "
    "--android_abi arm64-v8a --config Release …, see the README), push it (and "
    "libonnxruntime.so beside it) to the device and set the descriptor's ort_perf_test"
)
RESULT_FILE = "times.txt"
# the statistics it prints: "P50 Latency: 0.0587108 s" (older builds: "... is 0.0587108sec")
STAT_RE = re.compile(r"^(Min|Max|P50|P90) Latency(?::| is) *([0-9.eE+-]+) *s", re.MULTILINE)
AVERAGE_RE = re.compile(r"Average (?:inference )?time cost(?: total)?: *([0-9.eE+-]+) ms")
COUNT_RE = re.compile(r"(?:Total inference requests: *|Total iterations:|Runs:)([0-9]{1,12})\b")


def read_model(artifact: str | Path | bytes) -> tuple[bytes, str]:
    """The bytes of an ONNX or ORT-format model and the suffix onnxruntime_perf_test
    needs to load it (``.ort`` for the ORT flatbuffer format, else ``.onnx``)."""
    if not isinstance(artifact, bytes | bytearray):
        p = Path(artifact)
        if not p.is_file():
            raise EdgepruneError(f"artifact {artifact} does not exist")
        artifact = p.read_bytes()
    data = bytes(artifact)
    if data[4:8] == b"ORTM":  # the ORT format's flatbuffer file identifier
        return data, ".ort"
    if data[4:8] == b"ET12":
        raise EdgepruneError(
            "the model is an ExecuTorch program, not an ONNX or ORT model",
            "time a .pte with the device's executor_runner",
        )
    return data, ".onnx"


class OrtPerfTestRunner(DeviceBinaryRunner):
    """Time an .onnx/.ort with ``onnxruntime_perf_test`` on the far side of a transport:
    the model is pushed to a fresh temporary folder and run there with generated random
    inputs (``-I -m times -r N -x THREADS -e cpu -o 99``); the result file it writes
    (one line per run: ``name,seconds,peak bytes,cpu %,index``) is pulled back and the
    folder removed (the transport removes it also on Ctrl-C and timeout)."""

    name = "onnxruntime"
    binary_name = PERF_TEST
    build_hint = BUILD_HINT

    _model: tuple[bytes, str] | None = None  # what load() read

    def version(self) -> str:
        return PERF_TEST

    def load(self, artifact: str | Path | bytes) -> None:
        self._model = read_model(artifact)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        here = OnnxRuntimeRunner()  # the shapes are in the model: read them here
        here.load(self.loaded(self._model)[0])
        return here.input_shapes()

    def run(self, inputs: dict[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        raise EdgepruneError(
            f"{PERF_TEST} times models but does not return outputs",
            "outputs are checked on this machine ('edgeprune export' records parity)",
        )

    def argv(self, model: str, runs: int) -> list[str]:
        """The command line: ``runs`` timed runs (after its own untimed warm-up run)."""
        argv = [self.binary, "-I", "-m", "times", "-r", str(runs), "-e", "cpu", "-o", "99"]
        if self.threads:
            argv += ["-x", str(int(self.threads))]
        argv += ["-s", model, RESULT_FILE]
        if "/" in self.binary:  # a build with --build_shared_lib: libonnxruntime.so beside it
            argv = ["env", f"LD_LIBRARY_PATH={self.binary.rsplit('/', 1)[0]}", *argv]
        return argv

    def _invoke(self, runs: int) -> tuple[str, str]:
        """Run it there; (its stdout, the result file's text, or "" if it wrote none)."""

        data, suffix = self.loaded(self._model)
        self.check_binary()
        t = self.transport
        with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as ldir, t.tempdir() as rdir:
            local = Path(ldir) / f"model{suffix}"
            local.write_bytes(data)
            remote = t.put(local, rdir)
            res = t.run(self.argv(remote, runs), cwd=rdir)
            if res.returncode != 0:
                raise EdgepruneError(f"{PERF_TEST} failed on {t.where}: {failure_line(res)}")
            try:
                t.get(f"{rdir}/{RESULT_FILE}", Path(ldir) / RESULT_FILE)
                times = (Path(ldir) / RESULT_FILE).read_text()
            except (EdgepruneError, OSError):
                times = ""
        return res.stdout, times

    def time(self, policy: TimingPolicy | None = None) -> Timing:
        p = policy or TimingPolicy()
        n, skip = max(p.min_runs, 1), max(p.warmup - 1, 0)  # it warms up once itself
        stdout, times = self._invoke(skip + n)
        extra = {"via": PERF_TEST, "where": self.transport.where}
        samples = parse_result_file(times)[skip:]
        if samples:
            return self.timing(samples, **extra)
        meta = {"threads": self.threads, "runtime": self.name, "runtime_version": self.version()}
        return timing_from_summary(stdout, extra, meta)


def failure_line(res) -> str:
    """The line that says why it failed: its own ``Run failed:…`` (stdout) or the
    exception it printed (stderr), not its progress lines or onnxruntime's warnings."""
    lines = [ln.strip() for ln in (res.stdout + "\n" + res.stderr).splitlines() if ln.strip()]
    said = [ln for ln in lines if re.search(r"fail|error|exception|invalid", ln, re.IGNORECASE)]
    return (said or lines or [f"exit {res.returncode}"])[-1][:200]


def parse_result_file(text: str) -> list[float]:
    """The per-run times (ms, in run order) of onnxruntime_perf_test's result file:
    ``name,seconds,peak working set,cpu %,run index`` lines (statistics lines ignored)."""
    runs = []
    for line in text.splitlines():
        parts = line.rsplit(",", 4)
        if len(parts) == 5 and re.fullmatch(r"[0-9]{1,9}", parts[4].strip()):
            runs.append((int(parts[4]), parse_ms(parts[1].strip(), PERF_TEST) * 1e3))
    return [ms for _, ms in sorted(runs)]


def timing_from_summary(stdout: str, extra: dict, meta: dict) -> Timing:
    """A Timing from the statistics onnxruntime_perf_test prints (no result file): its
    min/P50/P90/max, else its average; ``extra["note"]`` says which."""
    stats = {k: parse_ms(v, PERF_TEST) * 1e3 for k, v in STAT_RE.findall(stdout)}
    count = COUNT_RE.findall(stdout)
    runs = int(count[-1]) if count else 1
    if {"Min", "Max", "P50", "P90"} <= set(stats):
        extra["note"] = f"min/P50/P90/max printed by {PERF_TEST} over all its runs (no result file)"
        med, p90, lo, hi = stats["P50"], stats["P90"], stats["Min"], stats["Max"]
        return Timing(
            median_ms=med, p90_ms=p90, min_ms=lo, max_ms=hi, runs=runs, **meta, extra=extra
        )
    avg = AVERAGE_RE.findall(stdout)
    if not avg:
        raise EdgepruneError(f"{PERF_TEST} printed no timing")
    ms = parse_ms(avg[-1], PERF_TEST)
    extra["note"] = f"mean over its runs, printed by {PERF_TEST} (no per-run times)"
    return Timing(median_ms=ms, p90_ms=ms, min_ms=ms, max_ms=ms, runs=runs, **meta, extra=extra)


def make(threads=None, precision="fp32", transport=None, ort_perf_test=None, **options):
    """The runner: in this process, or ``onnxruntime_perf_test`` through a non-local
    transport (the device descriptor's ``ort_perf_test``: its path there)."""
    if transport is not None and getattr(transport, "name", "local") != "local":
        return OrtPerfTestRunner(transport, ort_perf_test, threads, precision)
    return OnnxRuntimeRunner(threads=threads, precision=precision, **options)


RUNTIME = Runtime(
    "onnxruntime", make, available, device_options=("ort_perf_test",), shells_out=True
)
