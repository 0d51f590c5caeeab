"""The profile sweep: measure a device's latency table.

The sweep times, in the device's runtime, ONNX exports of: one transformer block at
token counts on a grid from 1 to 197, its attention half and MLP half (tables
``attn``/``mlp``, for mid-block methods), the fixed parts (``embed``, ``head``) and,
with a method, its selector at the token counts it sees. With ``e2e`` (the default)
it also times a few whole models (dense, the method's default schedule, a sparse one)
in the same interleaved passes and fits the end-to-end correction the latency model
applies to the sum of pieces. The result is a ``LatencyTable`` saved atomically: an
interrupted sweep writes nothing. (``edgeprune.profiling.measure`` wraps it for the CLI: the
table's file name, the resume file, running here or through the device's transport.)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgeprune.core.arch import Arch
from edgeprune.core.backends.runner import runtime
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import get_method
from edgeprune.core.methods.base import geometric
from edgeprune.core.methods.tokenops import edgeprune_kernels
from edgeprune.core.plan import SelectorStage, TokenPlan
from edgeprune.core.source import resolve
from edgeprune.export.onnx import simplify, trace_to_onnx
from edgeprune.latency.model import fit_end_to_end
from edgeprune.latency.table import Curve, LatencyTable, Point
from edgeprune.profiles.devices import Device
from edgeprune.profiling.monotone import isotonic, noise_summary, pass_spread, shape_breaks
from edgeprune.profiling.pieces import Embed, Head, Piece, lower_module, make_chain, make_vit
from edgeprune.profiling.resume import ResumeFile
from edgeprune.runtimes.base import device_options, runner_for_device
from edgeprune.runtimes.timing import Timing, TimingPolicy

CURVE_TABLES = ("block", "attn", "mlp")
# how selectors far from the plan's own stages are timed: this keep ratio per stage
SELECTOR_KEEP = 0.7
# latency curves expected not to fall with more tokens: checked, re-timed, fitted monotone
SHAPED_TABLES = ("block", "attn", "mlp", "selector")
# a point is re-timed when it is this much (or twice the median pass spread) slower than
# a point with more tokens
MIN_SHAPE_TOLERANCE = 0.03
# the keep ratio per stage of the sparse whole-model anchor
SPARSE_ANCHOR = 0.6


def default_grid(num_tokens: int = 197, step: int = 8) -> list[int]:
    """1, 8, 16, …, and the full token count: dense enough that linear interpolation
    stays within ~2 % of a measurement (checked by ``interp_check``)."""
    return sorted({1, *range(step, num_tokens, step), num_tokens})


def parse_grid(text: str | None, num_tokens: int) -> list[int] | None:
    """``--grid``: ``1,8,16,197`` or ``step:N``."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("step:"):
        try:
            step = int(text[5:])
        except ValueError:
            raise EdgepruneError(f"--grid {text}: step is not an integer", "e.g. step:8") from None
        if step < 1:
            raise EdgepruneError(f"--grid {text}: step must be positive")
        return default_grid(num_tokens, step)
    try:
        vals = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise EdgepruneError(
            f"--grid '{text}' is not a list of integers", "e.g. --grid 1,8,16,197 or step:8"
        ) from None
    if not vals or vals[0] < 1 or vals[-1] > num_tokens:
        raise EdgepruneError(f"--grid token counts must lie in 1..{num_tokens}")
    return vals


@dataclass(kw_only=True)
class ProfileRequest:
    """What one sweep measures, and how (``edgeprune profile``'s settings, parsed)."""

    device: Device
    arch: Arch
    method: str | None = None
    threads: int | None = None  # None: the descriptor's
    batch: int = 1
    grid: list[int] | None = None
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    check_points: int = 4  # off-grid block measurements to check interpolation
    halves: bool = True  # measure attn/mlp tables
    rounds: int = 3  # passes over all pieces; a point's figure is the median over passes
    chain: int = 4  # blocks are timed as a chain of this many distinct blocks (÷ chain)
    e2e: bool = True  # also time whole models and fit the end-to-end correction
    retime: int = 2  # attempts at re-timing points that break the monotone shape

    @property
    def threads_used(self) -> int:
        return self.threads if self.threads else self.device.resolved_threads()


def fingerprint() -> dict:
    """What machine this is, enough to tell two profiles' machines apart."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    info = {
        "hostname": platform.node(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    digest = hashlib.sha256(repr(sorted(info.items())).encode()).hexdigest()[:16]
    return {"id": digest, **info}


def _selector_stages(arch: Arch, method_name: str, grid: Sequence[int]) -> list[SelectorStage]:
    method = get_method(method_name)
    plan = method.token_plan(arch, method.default_config(arch))
    own = {s.tokens_in: s for s in plan.selectors}
    if not own:
        return []
    where = plan.selectors[0].where
    stages = dict(own)
    for n in grid:
        if n >= 8 and n not in stages:
            k = max(2, min(n, 1 + round((n - 1) * SELECTOR_KEEP)))
            stages[n] = SelectorStage(0, where, n, k)
    return [stages[n] for n in sorted(stages)]


@dataclass(frozen=True)
class ModelPiece:
    """A whole model (random weights) exported as ``export`` does: an e2e anchor."""

    table: str
    tokens: int  # the anchor's index
    label: str
    plan: TokenPlan
    build: Callable[[], bytes]
    repeat: int = 1
    model: Callable[[], object] | None = None  # the model itself, for non-ONNX targets
    input_shape: tuple[int, ...] = ()

    def onnx(self, opset: int = 17) -> bytes:
        return self.build()

    def artifact(self, target: str = "onnx") -> bytes:
        if target == "onnx":
            return self.onnx()
        return lower_module(self.model(), self.input_shape, target)


def anchor_specs(arch: Arch, method: str | None) -> list[tuple[str, tuple[float, ...] | None]]:
    """The whole models a profile times: dense, the method's default schedule and, for
    methods with keep ratios, a sparse one (0.6 per stage; cumulative: 0.6, 0.36, …).
    None of them is among validate-profile's schedules, so its check stays out of sample."""
    specs: list[tuple[str, tuple[float, ...] | None]] = [(f"{arch.name}:dense", None)]
    if method and method != "dense":
        m = get_method(method)
        specs.append((f"{arch.name}:{method}", None))
        n = len(m.default_locs)
        if n:
            keep = tuple(round(r, 4) for r in geometric(SPARSE_ANCHOR, n, m.cumulative))
            specs.append((f"{arch.name}:{method}", keep))
    return specs


def anchor_pieces(req: ProfileRequest) -> list[ModelPiece]:
    out = []
    for i, (spec, keep) in enumerate(anchor_specs(req.arch, req.method)):
        src = resolve(spec, keep=keep)
        label = spec if keep is None else f"{spec} keep {list(keep)}"

        def build(src=src) -> bytes:
            img = req.arch.img_size
            raw = trace_to_onnx(src.model(), (req.batch, 3, img, img), 17)
            return simplify(raw).SerializeToString()

        shape = (req.batch, 3, req.arch.img_size, req.arch.img_size)
        out.append(ModelPiece("e2e", i, label, src.plan, build, model=src.model, input_shape=shape))
    return out


def plan_pieces(req: ProfileRequest):
    """Every piece to time, in order, as (table, tokens, builder) with lazy builders."""

    arch, b, c = req.arch, req.batch, req.arch.embed_dim
    grid = list(req.grid or default_grid(arch.num_tokens))
    final_tokens = arch.num_tokens
    if req.method:
        m = get_method(req.method)
        plan = m.token_plan(arch, m.default_config(arch))
        if req.grid is None:  # the plan's own token counts are measured, not interpolated
            grid = sorted(set(grid) | set(plan.attn_tokens) | set(plan.mlp_tokens))
        final_tokens = plan.final_tokens
    if req.chain < 1:
        raise EdgepruneError(f"--chain {req.chain} must be at least 1")
    vit = make_vit(arch)
    pieces: list[Callable[[], Piece]] = [
        lambda: Piece("embed", None, Embed(vit), (b, arch.in_chans, arch.img_size, arch.img_size)),
        lambda: Piece("head", final_tokens, Head(vit), (b, final_tokens, c)),
    ]
    tables = CURVE_TABLES if req.halves else ("block",)
    mods = {t: make_chain(arch, t, req.chain) for t in tables}
    for table in tables:
        for n in grid:
            pieces.append(lambda t=table, n=n: Piece(t, n, mods[t], (b, n, c), req.chain))
    if req.method:
        m = get_method(req.method)
        for st in _selector_stages(arch, req.method, grid):
            pieces.append(
                lambda st=st: Piece(
                    "selector",
                    st.tokens_in,
                    m.selector_module(arch, st).eval(),
                    (b, st.tokens_in, c),
                )
            )
    if req.e2e:
        for mp in anchor_pieces(req):
            pieces.append(lambda mp=mp: mp)
    return grid, pieces


def check_grid_points(grid: Sequence[int], k: int) -> list[int]:
    """Up to ``k`` off-grid token counts, midway in the widest gaps spread over the grid."""
    mids = [(a + b) // 2 for a, b in zip(grid, grid[1:], strict=False) if b - a >= 2]
    if k <= 0 or not mids:
        return []
    idx = sorted({round(i * (len(mids) - 1) / max(1, k - 1)) for i in range(k)})
    return [mids[i] for i in idx]


def _request_key(req: ProfileRequest, grid: Sequence[int]) -> dict:
    """What must match for saved timings to be reused by --resume: the options, the
    device descriptor's contents (not only its name: an edited descriptor times
    differently), the architecture's dimensions and the machine they were timed on."""
    p = req.policy
    words = ("description", "aliases")  # what does not change a timing
    descriptor = {k: v for k, v in asdict(req.device).items() if k not in words}
    return {
        "device": req.device.name,
        "device_sha256": _sha256_of(descriptor),
        "machine": fingerprint()["id"],
        "arch": req.arch.to_dict(),
        "method": req.method,
        "batch": req.batch,
        "threads": req.threads_used,
        "grid": list(grid),
        "chain": req.chain,
        "halves": req.halves,
        "e2e": req.e2e,
        "check_points": req.check_points,
        "rounds": req.rounds,
        "policy": [p.warmup, p.min_runs, p.max_runs, p.min_time_s, p.max_time_s],
    }


def _sha256_of(data: dict) -> str:
    """The sha256 of ``data`` as canonical JSON (keys sorted; anything else as text)."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def measure(
    req: ProfileRequest,
    progress: Callable[[str, int, int], None] | None = None,
    runner=None,
    resume: Path | None = None,
) -> LatencyTable:
    """Run the sweep here (or through ``runner``'s transport) and return the table. A
    descriptor with ``custom_kernels = true`` (ExecuTorch) lowers every piece as
    ``export --custom-kernels`` does, and the table records it for what reads it."""

    kernels = bool(device_options(req.device).get("custom_kernels"))
    with edgeprune_kernels(kernels):
        table = Sweep(req, progress, runner, resume).run()
    if kernels:
        table.device["custom_kernels"] = True
    return table


class Sweep:
    """One profile sweep, step by step: plan the pieces, load them, time them in
    interleaved passes, re-time the points that break the monotone shape, fit the
    curves, check interpolation off the grid, and fit the whole-model anchors.

    Machines are shared and noisy: a burst of load hits a stretch of time, not a token
    count. So every piece is loaded once and timed in ``rounds`` interleaved passes
    (A B C … A B C …); each point keeps the median of its passes."""

    def __init__(
        self,
        req: ProfileRequest,
        progress: Callable[[str, int, int], None] | None = None,
        runner=None,
        resume: Path | None = None,
    ):
        if req.batch < 1:
            raise EdgepruneError(f"--batch {req.batch} is not a positive batch size")
        self.req = req
        self.runner = runner  # one shared runner (through a transport), else one per piece
        first = self._new_runner()
        self.fmt = runtime(req.device.runtime).target  # what the runner loads: onnx, executorch…
        self.grid, self.pieces = plan_pieces(req)
        self.checks = check_grid_points(self.grid, req.check_points)
        self.rounds = max(1, req.rounds)
        self.total = (len(self.pieces) + len(self.checks)) * self.rounds
        self.done = 0
        self.step = progress or (lambda _d, _i, _n: None)
        self.results: dict[str, dict[int | None, Timing]] = {}
        self.version = first.version()
        self.per_round = _split_policy(req.policy, self.rounds)
        self.ckpt = ResumeFile(resume, _request_key(req, self.grid)) if resume is not None else None
        self.spreads: dict[tuple, float] = {}  # relative spread of each point's passes
        self.retimed: list[list] = []
        self.raw: dict[str, list[float]] = {}  # each curve's medians before the monotone fit

    def run(self) -> LatencyTable:
        """The whole sweep: the latency table (with its end-to-end fit)."""
        anchors, loaded = self._time_pieces()
        noise, tol = self._retime(loaded)
        curves = {t: self._curve(t) for t in SHAPED_TABLES if t in self.results}
        interp = self._interp_check(curves["block"])
        self.step("done", self.total, self.total)
        table = self._table(curves, self._extra(noise, tol, interp))
        if anchors:
            table.e2e = fit_end_to_end(table, self._anchor_times(anchors))
        return table

    # ---- timing ---------------------------------------------------------------------
    def _new_runner(self):
        """The shared runner, or a fresh one for the device."""
        if self.runner is not None:
            return self.runner
        return runner_for_device(self.req.device, self.req.threads_used)

    def _load(self, items: list) -> list[tuple]:
        """(piece, runner) for every piece, each loaded in its own runner (with a shared
        runner, pieces are loaded each time they are timed)."""
        loaded = []
        for piece in items:
            r = self._new_runner()
            if self.runner is None:
                r.load(piece.artifact(self.fmt))
            loaded.append((piece, r))
        return loaded

    def _time_pieces(self) -> tuple[list[ModelPiece], list[tuple]]:
        """Build, load and time every piece and the off-grid check points. The check
        points are timed in the same interleaved passes as the grid, so that drift in
        the machine's load cannot pass for interpolation error."""
        req = self.req
        blk = make_chain(req.arch, "block", req.chain)
        check_items = [
            Piece("check", n, blk, (req.batch, n, req.arch.embed_dim), req.chain)
            for n in self.checks
        ]
        built = [b() for b in self.pieces]
        anchors = [p for p in built if isinstance(p, ModelPiece)]
        loaded = self._load(built + check_items)
        for (table, tokens), t in self._passes(loaded, "").items():
            self.results.setdefault(table, {})[tokens] = t
        return anchors, loaded

    def _passes(self, loaded: list[tuple], label: str, resumable: bool = True) -> dict:
        """Time ``loaded`` in ``rounds`` interleaved passes: the median point of each."""
        per: dict[tuple, list[Timing]] = {}
        use = self.ckpt if resumable else None
        for rnd in range(self.rounds):
            for piece, r in loaded:
                what = f"{label}{piece.table} {piece.tokens or ''}".strip()
                self.step(what, self.done, self.total)
                saved = use.get(piece.table, piece.tokens, rnd) if use else None
                if saved is None:  # else measured before an interruption (--resume)
                    saved = self._time_one(piece, r)
                    if use is not None:
                        use.put(piece.table, piece.tokens, rnd, saved)
                per.setdefault((piece.table, piece.tokens), []).append(saved)
                self.done += 1
        for k, v in per.items():
            self.spreads[k] = pass_spread([t.median_ms for t in v])
        return {k: _combine(v) for k, v in per.items()}

    def _time_one(self, piece, r) -> Timing:
        """One pass's timing of one piece (per repeat of the piece)."""
        if self.runner is not None:  # one shared runner (trtexec): load each time
            r.load(piece.artifact(self.fmt))
        t = r.time(self.per_round)
        if piece.repeat <= 1:
            return t
        k = piece.repeat
        return replace(
            t, median_ms=t.median_ms / k, p90_ms=t.p90_ms / k, min_ms=t.min_ms / k,
            max_ms=t.max_ms / k,
        )  # fmt: skip

    def _retime(self, loaded: list[tuple]) -> tuple[dict, float]:
        """A point that breaks the expected shape (slower than a point with more tokens,
        by more than the noise) is a burst of load, not the model: time it again, in
        fresh interleaved passes, and keep the new figure. The stored curves are
        monotone fits. Returns the noise summary and the shape tolerance."""
        noise = noise_summary(list(self.spreads.values()))
        tol = max(MIN_SHAPE_TOLERANCE, 2 * noise["median_spread"])
        by_key = {(p.table, p.tokens): (p, r) for p, r in loaded}
        for attempt in range(self.req.retime):
            again = [by_key[k] for k in _shape_breaks(self.results, tol)]
            if not again:
                break
            self.total += len(again) * self.rounds
            timed = self._passes(again, f"re-timing {attempt + 1}: ", resumable=False)
            for (table, tokens), t in timed.items():
                self.results[table][tokens] = t
                self.retimed.append([table, tokens])
        return noise, tol

    # ---- the table ------------------------------------------------------------------
    def _curve(self, table: str) -> Curve:
        """A table's curve: the monotone fit of its medians and of its p90s."""
        r = self.results[table]
        ts = sorted(r)
        self.raw[table] = [r[t].median_ms for t in ts]
        med = isotonic(self.raw[table])
        return Curve(tuple(ts), tuple(med), tuple(isotonic([r[t].p90_ms for t in ts])))

    def _interp_check(self, block: Curve) -> list[dict]:
        """The off-grid check points: measured against interpolated on the block curve."""
        interp = []
        for n in self.checks:
            t = self.results["check"][n]
            est = block.at(n)
            interp.append(
                {
                    "tokens": n,
                    "measured_ms": t.median_ms,
                    "interpolated_ms": est,
                    "rel_err": abs(est - t.median_ms) / t.median_ms if t.median_ms else 0.0,
                }
            )
        return interp

    def _extra(self, noise: dict, tol: float, interp: list[dict]) -> dict:
        """The table's ``extra``: how it was measured and how well."""
        req, results = self.req, self.results
        runs = [t.runs for k, r in results.items() if k not in ("check", "e2e") for t in r.values()]
        extra: dict = {
            "grid": list(self.grid),
            "timing": {
                "warmup": req.policy.warmup,
                "min_runs": req.policy.min_runs,
                "max_runs": req.policy.max_runs,
                "min_time_s": req.policy.min_time_s,
                "max_time_s": req.policy.max_time_s,
                "runs_per_point": [min(runs), max(runs)],
                "rounds": self.rounds,
            },
            "pieces": f"a chain of {req.chain} DeiT blocks (distinct seeded random weights) "
            f"exported to {self.fmt} at each token count; times divided by the chain length",
            "chain": req.chain,
            "head_tokens": next(iter(results["head"])),
        }
        extra["noise"] = {**noise, "shape_tolerance": tol}
        extra["retimed"] = {
            "count": len(self.retimed),
            "points": self.retimed,
            "still_breaking": [list(k) for k in _shape_breaks(results, tol)],
        }
        extra["raw_median_ms"] = self.raw
        if interp:
            extra["interp_check"] = {
                "table": "block",
                "points": interp,
                "max_rel_err": max(p["rel_err"] for p in interp),
            }
        if "selector" in results:
            extra["selector_keep_off_plan"] = SELECTOR_KEEP
        return extra

    def _device_info(self) -> dict:
        """The table's ``device``: the descriptor, the runtime's version, this machine."""
        dev = self.req.device
        return {
            "name": dev.name,
            "runtime": dev.runtime,
            "runtime_version": self.version,
            "precision": dev.precision,
            "threads": self.req.threads_used,
            "host": dev.host or "local",
            "transport": dev.transport,
            "fingerprint": fingerprint(),
        }

    def _table(self, curves: dict[str, Curve], extra: dict) -> LatencyTable:
        """The latency table of the timed pieces (before the end-to-end fit)."""
        req, results = self.req, self.results
        emb, head = results["embed"][None], next(iter(results["head"].values()))
        return LatencyTable(
            device=self._device_info(),
            arch=req.arch,
            method=req.method,
            batch=req.batch,
            date=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            measured=True,
            block=curves["block"],
            embed=Point(emb.median_ms, emb.p90_ms),
            head=Point(head.median_ms, head.p90_ms),
            attn=curves.get("attn"),
            mlp=curves.get("mlp"),
            selectors={req.method: curves["selector"]} if "selector" in curves else {},
            extra=extra,
        )

    def _anchor_times(self, anchors: list[ModelPiece]) -> list[tuple]:
        """(label, plan, median ms, p90 ms) of every whole model timed."""
        timed = self.results["e2e"]
        return [
            (a.label, a.plan, timed[a.tokens].median_ms, timed[a.tokens].p90_ms) for a in anchors
        ]


def _shape_breaks(results: dict, tol: float) -> list[tuple[str, int]]:
    """(table, tokens) of the points of every latency curve that break its monotone
    shape by more than ``tol``."""
    out = []
    for table in SHAPED_TABLES:
        if table in results:
            ts = sorted(results[table])
            bad = shape_breaks([results[table][t].median_ms for t in ts], tol)
            out += [(table, ts[i]) for i in bad]
    return out


def _split_policy(p: TimingPolicy, rounds: int) -> TimingPolicy:
    """The per-pass share of a timing policy."""
    if rounds == 1:
        return p
    return TimingPolicy(
        warmup=max(1, p.warmup // 2) if p.warmup else 0,
        min_runs=max(1, -(-p.min_runs // rounds)),
        max_runs=max(1, -(-p.max_runs // rounds)),
        min_time_s=p.min_time_s / rounds,
        max_time_s=p.max_time_s / rounds,
    )


def _combine(ts: list[Timing]) -> Timing:
    """One point from its passes: median of the pass medians (and of the p90s)."""

    if len(ts) == 1:
        return ts[0]
    t0 = ts[0]
    return Timing(
        median_ms=statistics.median(t.median_ms for t in ts),
        p90_ms=statistics.median(t.p90_ms for t in ts),
        min_ms=min(t.min_ms for t in ts),
        max_ms=max(t.max_ms for t in ts),
        runs=sum(t.runs for t in ts),
        threads=t0.threads,
        runtime=t0.runtime,
        runtime_version=t0.runtime_version,
        extra=t0.extra,
    )
