"""Check a latency profile against end-to-end measurements of whole models.

Random keep schedules of the profile's arch and method are exported to ONNX (the real
static graphs, parity-checked), timed end-to-end in the profile's runtime and compared with the
latency model's prediction: |pred − meas| / meas. Models are timed interleaved (drift
hits all alike) in short bursts whose first run is discarded, so each figure is the
steady state a model sees running back to back, as the profile's pieces were timed.

The verdict is written back into the table file (``latency.table.record_validation``):
a table whose median error is above VALIDATION_LIMIT is marked untrusted there, and the
commands that use it say so; a later validation within the limit clears the mark.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeprune.core.arch import ARCHS
from edgeprune.core.atomic import Output, check_outputs
from edgeprune.core.backends.runner import RUNTIMES, get_runner, runtime
from edgeprune.core.backends.runner import runtime as runtime_of
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import get_method
from edgeprune.core.methods.base import geometric
from edgeprune.core.methods.tokenops import edgeprune_kernels
from edgeprune.core.methods.tome import clamp_schedule, inflected
from edgeprune.core.records import record
from edgeprune.core.source import resolve
from edgeprune.export.manifest import now_utc
from edgeprune.export.targets import ExportRequest, export_source, get_target
from edgeprune.latency.model import LatencyModel, load_model
from edgeprune.latency.table import VALIDATION_LIMIT, record_validation
from edgeprune.profiling.sweep import anchor_specs
from edgeprune.render.plots import plot_validation
from edgeprune.runtimes.conditions import watched
from edgeprune.runtimes.timing import Timing, time_interleaved


@dataclass(frozen=True, kw_only=True)
class ConfigResult:
    """One random schedule: predicted and measured."""

    keep_ratios: tuple[float, ...]
    predicted_ms: float
    measured_ms: float
    measured_p90_ms: float
    r_schedule: tuple[int, ...] | None = None  # ToMe: the tokens merged per block

    @property
    def rel_error(self) -> float:
        return abs(self.predicted_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict:
        return {
            **({"r_schedule": list(self.r_schedule)} if self.r_schedule is not None else {}),
            "keep_ratios": list(self.keep_ratios),
            "predicted_ms": self.predicted_ms,
            "measured_ms": self.measured_ms,
            "measured_p90_ms": self.measured_p90_ms,
            "rel_error": self.rel_error,
        }


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    """What ``validate-profile`` found: every schedule's error, and the machine's drift."""

    profile: str
    method: str
    threads: int
    rounds: int
    results: tuple[ConfigResult, ...]
    burst: int = 1
    # the profile's whole-model anchors re-timed here: (label, in the profile, now) ms
    anchors: tuple[tuple[str, float, float], ...] = ()
    # the noise seen: median over the models of their runs' (p90 − p10) / median
    noise: float | None = None
    # what was written into the table file (``verdict``; None: not recorded)
    recorded: dict | None = None
    # this machine while measuring (``runtimes.conditions``)
    conditions: dict | None = None

    @property
    def drift(self) -> float | None:
        """How much faster (<0) or slower (>0) the machine runs now than when profiled:
        the median ratio of the anchors' latencies now / then, minus 1."""
        if not self.anchors:
            return None
        return float(np.median([now / then for _, then, now in self.anchors])) - 1.0

    @property
    def median_error(self) -> float:
        return float(np.median([r.rel_error for r in self.results]))

    @property
    def p90_error(self) -> float:
        return float(np.percentile([r.rel_error for r in self.results], 90))

    @property
    def drift_corrected(self) -> tuple[float, float] | None:
        """(median, p90) error with every prediction scaled by the measured drift
        (× (1 + drift)): what is left once the machine's change of speed since the
        profile is taken out. The anchors were timed in the same rounds as the
        schedules, so this separates a table that is wrong from a machine that moved."""
        d = self.drift
        if d is None:
            return None
        e = [abs(r.predicted_ms * (1.0 + d) - r.measured_ms) / r.measured_ms for r in self.results]
        return float(np.median(e)), float(np.percentile(e, 90))

    def verdict(self, limit: float = VALIDATION_LIMIT) -> dict:
        """The table file's ``extra["validation"]``: the errors, and ``trusted`` (the
        median error within ``limit``)."""
        dc = self.drift_corrected
        return {
            "median_error": self.median_error,
            "p90_error": self.p90_error,
            "drift_corrected_median_error": dc[0] if dc else None,
            "drift": self.drift,
            "noise": self.noise,
            "configs": len(self.results),
            "limit": limit,
            "trusted": self.median_error <= limit,
            "date": now_utc(),
        }

    def to_dict(self) -> dict:
        anchors = [{"label": lb, "profile_ms": t0, "now_ms": t1} for lb, t0, t1 in self.anchors]
        return {
            **record(self, "profile method threads rounds burst"),
            "anchors": anchors,
            **record(self, "drift noise"),
            "configs": len(self.results),
            **record(self, "median_rel_error=median_error p90_rel_error=p90_error"),
            "drift_corrected": dict(zip(("median_rel_error", "p90_rel_error"), dc, strict=True))
            if (dc := self.drift_corrected)
            else None,
            "results": [r.to_dict() for r in self.results],
            "recorded": self.recorded,
        }


def random_schedules(method, n_stages: int, count: int, seed: int = 0) -> list[tuple[float, ...]]:
    """``count`` random keep schedules (non-increasing for cumulative methods);
    the dense-most and the sparsest corners first, so the range is always covered."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, ...]] = []
    for i in range(count):
        if i == 0:
            r = np.full(n_stages, 0.9)
        elif i == 1:
            r = np.array(geometric(0.5, n_stages)) if method.cumulative else np.full(n_stages, 0.25)
        else:
            r = rng.uniform(0.1, 1.0, n_stages)
        if method.cumulative:
            r = np.sort(r)[::-1]
        out.append(tuple(round(float(x), 3) for x in r))
    return out


def random_r_schedules(arch, count: int, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` random ToMe r schedules (tokens merged per block) of ToMe's own shapes
    (``tome.inflected``: r and an inflection in [-1, 1]), clamped as ToMe runs them;
    a light constant r (~N / (10·depth)) and a heavy one (N / depth) first, so the range
    is always covered; r otherwise up to 1.5 N / depth."""
    rng = np.random.default_rng(seed)
    n0, depth = arch.num_tokens, arch.depth
    heavy = max(1, n0 // depth)
    out: list[tuple[int, ...]] = []
    for i in range(count):
        if i < 2:
            r, bend = (max(1, round(0.1 * heavy)), heavy)[i], 0.0
        else:
            r = int(rng.integers(1, max(2, round(1.5 * heavy)) + 1))
            bend = round(float(rng.uniform(-1.0, 1.0)), 2)
        out.append(tuple(clamp_schedule(n0, inflected(r, bend, depth))))
    return out


def _schedules(meth, arch, configs: int, seed: int) -> tuple[list, list]:
    """The schedules validate-profile times, and their sources: keep ratios at the
    method's locations, or (ToMe) r schedules."""
    spec = f"{arch.name}:{meth.name}"
    if meth.name == "tome":
        used = random_r_schedules(arch, configs, seed)
        return used, [resolve(spec, method_options={"r": r}) for r in used]
    used = random_schedules(meth, len(meth.default_locs), configs, seed)
    return used, [resolve(spec, keep=r) for r in used]


def check_local_runtime(model: LatencyModel, what: str) -> str:
    """The runtime the table was measured with, refused unless it runs models here."""

    name = str(model.table.device.get("runtime"))
    if name not in RUNTIMES:
        raise EdgepruneError(f"profile {model.source} names an unknown runtime '{name}'")
    ok, why = runtime(name).available()
    if not ok:
        raise EdgepruneError(
            f"profile {model.source} was measured with {name}; "
            f"{what} measures with {name} on this machine, where it cannot run ({why})",
            "run it where that runtime is installed",
        )
    return name


class LocalModels:
    """Sources exported for a runtime into one temporary folder (the real static graph,
    parity-checked on one input, for the export target ``runtime`` loads:
    ``Runtime.target``, ONNX, ExecuTorch…) and loaded in that runtime's runner here, to
    be timed interleaved in this process. A context manager: the folder goes on exit."""

    def __init__(
        self,
        runtime: str,
        threads: int,
        batch: int,
        progress: Callable[[str], None] | None = None,
        kernels: bool = False,
    ):
        self.runtime, self.threads, self.batch = runtime, threads, batch
        self.kernels = kernels  # lowered with edgeprune's own kernels, as the profile was
        self.step = progress or (lambda _m: None)
        self.arch = None
        self.runners: list = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> LocalModels:
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeprune-time-")
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def load(self, source, label: str):
        """Export ``source`` and load it: a loaded runner."""

        target = runtime_of(self.runtime).target
        self.step(f"exporting {label}")
        path = Path(self._tmp.name) / f"m{len(self.runners)}{get_target(target).suffix}"
        req = ExportRequest(target=target, out=path, batch=self.batch, parity_inputs=1, force=True)

        with edgeprune_kernels(self.kernels):
            res = export_source(source, req)
        if res.error is not None:
            raise res.error
        r = get_runner(self.runtime, threads=self.threads)
        r.load(path)
        self.arch = self.arch or source.arch
        self.runners.append(r)
        return r

    def time(self, runners: Sequence, rounds: int = 30, burst: int = 3) -> list[Timing]:
        """Time loaded runners interleaved (``runtimes.timing.time_interleaved``) on one
        seeded input: one Timing each."""

        self.step(f"timing {len(runners)} model(s), {rounds} interleaved rounds")
        img = self.arch.img_size
        x = np.random.default_rng(0).standard_normal((self.batch, 3, img, img), dtype=np.float32)
        return time_interleaved(runners, [x] * len(runners), rounds=rounds, burst=burst)


def time_sources(
    sources: Sequence,
    runtime: str,
    threads: int,
    batch: int,
    *,
    rounds: int = 30,
    burst: int = 3,
    progress: Callable[[str], None] | None = None,
    labels: Sequence[str] | None = None,
    kernels: bool = False,
) -> list[Timing]:
    """Export and load every source (``LocalModels``) and time them all interleaved in
    one process: one Timing per source."""
    with LocalModels(runtime, threads, batch, progress, kernels) as here:
        runners = [
            here.load(src, labels[i] if labels else f"{i + 1}/{len(sources)}")
            for i, src in enumerate(sources)
        ]
        return here.time(runners, rounds, burst)


def _check_settings(configs: int, threads: int | None, rounds: int, burst: int) -> None:
    """Refuse ``validate-profile`` settings out of range."""
    if configs < 1:
        raise EdgepruneError(f"--configs {configs} must be at least 1")
    if threads is not None and threads < 1:
        raise EdgepruneError(f"--threads {threads} must be at least 1")
    if rounds < 3:
        raise EdgepruneError(f"--rounds {rounds} must be at least 3")
    if burst < 1:
        raise EdgepruneError(f"--burst {burst} must be at least 1")


def _profiled_method(model: LatencyModel):
    """The pruning method the profile was measured for (refused: none, or a custom arch)."""
    tb = model.table
    if tb.arch.name not in ARCHS or ARCHS[tb.arch.name] != tb.arch:
        raise EdgepruneError(f"profile arch {tb.arch.name} is not a built-in architecture")
    method_name = tb.method or (next(iter(tb.selectors)) if len(tb.selectors) == 1 else None)
    if method_name is None or method_name == "dense":
        raise EdgepruneError(
            f"profile {model.source} names no pruning method", "profile with --method"
        )
    return get_method(method_name)


def validate_profile(
    model: LatencyModel,
    *,
    configs: int = 20,
    threads: int | None = None,
    rounds: int = 30,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    burst: int = 3,
) -> ValidationReport:
    """Time ``configs`` random schedules of the profile's method (and its anchors)
    end-to-end here and compare them with the latency model's predictions."""

    tb = model.table
    _check_settings(configs, threads, rounds, burst)
    runtime = check_local_runtime(model, "validate-profile")
    meth = _profiled_method(model)
    threads = threads or int(tb.device.get("threads") or 1)
    used, sources = _schedules(meth, tb.arch, configs, seed)
    tome = meth.name == "tome"
    preds = [model.predict(src.plan).total_ms for src in sources]
    what = "r" if tome else "keep"
    labels = [f"{i + 1}/{len(used)} {what} {list(r)}" for i, r in enumerate(used)]
    # the profile's anchors, timed alongside (not part of the error): machine drift
    anchors = tb.e2e.anchors if tb.e2e is not None else ()
    for (spec, keep), a in zip(anchor_specs(tb.arch, tb.method), anchors, strict=False):
        sources.append(resolve(spec, keep=keep))
        labels.append(f"anchor {a.label}")
    kernels = bool(tb.device.get("custom_kernels"))
    timings = time_sources(
        sources, runtime, threads, tb.batch, rounds=rounds, burst=burst, progress=progress,
        labels=labels, kernels=kernels,
    )  # fmt: skip
    results = tuple(
        ConfigResult(
            keep_ratios=src.config.keep_ratios,
            predicted_ms=p,
            measured_ms=t.median_ms,
            measured_p90_ms=t.p90_ms,
            r_schedule=r if tome else None,
        )  # fmt: skip
        for r, src, p, t in zip(
            used, sources[: len(used)], preds, timings[: len(used)], strict=True
        )
    )
    again = tuple(
        (a.label, a.median_ms, t.median_ms)
        for a, t in zip(anchors, timings[len(used) :], strict=False)
    )
    noise = float(np.median([t.extra.get("spread", 0.0) for t in timings]))
    return ValidationReport(
        profile=model.source, method=meth.name, threads=threads, rounds=rounds, results=results,
        burst=burst, anchors=again, noise=noise,
    )  # fmt: skip


def validate_to_plot(
    profile: Path,
    plot: Path | None = None,
    *,
    pin: tuple[int, ...] | None = None,
    wait_quiet_s: float | None = None,
    force: bool = False,
    **settings,
) -> tuple[ValidationReport, Path]:
    """``edgeprune validate-profile``: validate the latency table ``profile`` and write
    the scatter plot (default ``<profile stem>.validate.png`` beside it; an existing one
    only with ``force``). ``settings``: ``validate_profile``'s (configs, threads, rounds,
    seed, progress, burst)."""

    profile = Path(profile)
    plot_path = plot or profile.with_name(profile.stem + ".validate.png")
    check_outputs({"--plot": Output(plot_path, ".png")}, {"the table": profile}, force)
    model = load_model(profile)
    with watched(pin=pin, wait_quiet_s=wait_quiet_s, progress=settings.get("progress")) as cond:
        rep = validate_profile(model, **settings)
    rep = replace(rep, conditions=cond)
    plot_validation(rep, plot_path)
    return record_verdict(rep, profile), plot_path


def record_verdict(rep: ValidationReport, profile: Path) -> ValidationReport:
    """Write the report's verdict into the table file ``profile`` (marked untrusted when
    its median error is above the limit); the report, with what was recorded and where
    (``recorded["table"]``; ``recorded["error"]`` when the file could not be written)."""
    verdict = rep.verdict()
    try:
        record_validation(profile, verdict)
        where = {"table": str(profile)}
    except OSError as e:
        where = {"table": None, "error": f"{profile} could not be written: {e.strerror or e}"}
    return replace(rep, recorded={**verdict, **where})
