"""Keep-ratio budgets: the schedule that meets a latency target and keeps the most.

Given a latency model (a device profile), a method and its pruning locations, the
search evaluates many keep schedules at once with the latency model (one vectorised
call) and picks, among those whose predicted latency is ≤ the target, the one with
the highest objective:

* default: the tokens kept, ``Σ_blocks (attn_tokens + mlp_tokens) / 2`` (the accuracy
  proxy the papers use; for pre-block methods simply the sum of tokens per block);
* with a sensitivity file: the predicted accuracy (see ``Sensitivity``).

ToMe (``--method tome``) has no keep ratios: its schedules are over r, the tokens merged
per block (``_tome_candidates``): ``geometric`` weighs a constant r (1 … (N − 1) // 2,
clamped per block as ToMe clamps it), ``free`` ToMe's own schedule shapes over r and an
inflection (tome/utils.py ``parse_r``: -1 the paper's decreasing schedule, 0 constant,
+1 increasing; INFLECTIONS), each predicted from the tokens entering every block (N − Σ
earlier r) and the merge's own time at those counts (the table's ``selectors.tome``).

Schedules: ``geometric`` is DynamicViT's ``[r, r², r³…]`` for cumulative methods (and
``[r, r, r…]`` for methods whose ratios are relative to each stage's input), ``r`` on
a 0.001 grid; ``free`` searches every stage on a grid (non-increasing ratios for
cumulative methods), then refines around the best point at a quarter of the step.

``scale`` re-anchors the table to the machine's speed now (``budget --verify``, see
``verify.py``): every prediction is multiplied by it before it meets the target, which
is the same search on the table at the target divided by ``scale``.

The margin comes from evidence (``resolve_margin``): ``auto`` aims the table's own
measured error under the target, and refuses a table whose error is larger than a
margin can usefully absorb (MAX_AUTO_MARGIN) rather than capping it silently. With a
sensitivity file the search keeps to the keep ratios it measured (its lowest ratio per
stage); ``extrapolate`` goes below them, and the result says which stages it did.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.flops import plan_flops
from edgeprune.core.methods import Method, MethodConfig, get_method
from edgeprune.core.methods.base import geometric
from edgeprune.core.methods.tome import clamp_schedule, inflected
from edgeprune.core.plan import TokenPlan, dense_plan
from edgeprune.core.schema import Strict, load_json, validate
from edgeprune.latency.model import LatencyModel, measured_error
from edgeprune.latency.table import piecewise_linear

SENSITIVITY_SCHEMA = "edgeprune.sensitivity"
SCHEDULES = ("geometric", "free")
MAX_FREE_CANDIDATES = 25_000
MAX_MARGIN = 0.5  # --margin above this is refused
# --margin auto absorbs a measured error up to this; a table whose error is larger is
# refused (a better table, or an explicit --margin), not capped silently
MAX_AUTO_MARGIN = 0.10
# ToMe's ``free`` schedules: its inflection (tome/utils.py parse_r) from -1 to 1 by 0.1
INFLECTIONS = tuple(round(-1 + 0.1 * i, 1) for i in range(21))


# ---- targets ---------------------------------------------------------------------------
def target_from(target_ms: float | None, target_fps: float | None) -> float:
    """The latency target in ms from exactly one of --target-ms / --target-fps."""
    if (target_ms is None) == (target_fps is None):
        raise EdgepruneError("give exactly one of --target-ms and --target-fps")
    name, v = ("--target-ms", target_ms) if target_ms is not None else ("--target-fps", target_fps)
    if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
        raise EdgepruneError(f"{name} {v} is not a positive finite number")
    return float(v) if target_ms is not None else 1000.0 / float(v)


# ---- sensitivity -----------------------------------------------------------------------
@dataclass(frozen=True)
class Sensitivity:
    """Accuracy measured at a few keep ratios per pruning stage.

    File format (JSON)::

        {"schema": "edgeprune.sensitivity", "metric": "top1", "dense": 72.2,
         "stages": {"3": {"keep_ratios": [0.3, 0.5, 0.7, 1.0],
                          "accuracy":    [66.0, 69.9, 71.5, 72.2]},
                    "6": {...}, "9": {...}}}

    ``stages`` is keyed by pruning location; each curve is the accuracy measured when
    that stage's ratio is varied (the others at a reference schedule, or dense).
    Predicted accuracy of a schedule = dense − Σ_stages (dense − acc_s(r_s)), each
    ``acc_s`` read by linear interpolation (held constant past its ends): the usual
    additive per-layer sensitivity model. Below a stage's lowest measured ratio the
    curve says nothing: the search keeps above it, or, asked to ``extrapolate``, reads
    the curve's first segment extended (never above the lowest point's accuracy).

    ``indistinct``: why the measurements cannot tell schedules apart (``indistinct``),
    None when they can.
    """

    dense: float
    stages: dict[int, tuple[tuple[float, ...], tuple[float, ...]]]
    metric: str = "accuracy"
    indistinct: str | None = None

    def predict(self, locs: tuple[int, ...], ratios: tuple[float, ...]) -> float:
        return self.predict_many(locs, [ratios])[0]

    def predict_many(
        self, locs: tuple[int, ...], schedules: list[tuple[float, ...]], extrapolate: bool = False
    ) -> list:
        """Predicted accuracy of many schedules at once (each curve held constant past
        its ends; with ``extrapolate``, below its lowest ratio, its first segment
        extended down, capped at the lowest point's value). The additive model can fall
        below 0 for aggressive schedules, and rise above 100 when a file's stages beat its
        dense figure; accuracy and agreement are percentages, so the prediction is kept
        within [0, 100]."""
        r = torch.tensor(schedules, dtype=torch.float64).reshape(len(schedules), len(locs))
        acc = torch.full((len(schedules),), float(self.dense), dtype=torch.float64)
        for j, loc in enumerate(locs):
            xs, ys = self.stages[loc]
            y = piecewise_linear(xs, ys, r[:, j], extrapolate=False)
            if extrapolate and len(xs) > 1:
                down = piecewise_linear(xs, ys, r[:, j]).clamp(max=ys[0])
                y = torch.where(r[:, j] < xs[0], down, y)
            acc -= self.dense - y
        if not bool(torch.isfinite(acc).all()):  # never a NaN into a budget or a plot
            raise EdgepruneError(
                "the sensitivity curves predict a non-finite accuracy",
                "check the sensitivity file: its accuracies must be finite numbers",
            )
        return acc.clamp(min=0.0, max=100.0).tolist()

    def covers(self, locs: tuple[int, ...], ratios: tuple[float, ...]) -> bool:
        """Whether every stage's keep ratio is at or above the lowest one measured there."""
        return all(r >= self.stages[loc][0][0] - 1e-9 for loc, r in zip(locs, ratios, strict=True))

    def outside(self, locs: tuple[int, ...], ratios: tuple[float, ...]) -> tuple[str, ...]:
        """The stages of a schedule below the lowest keep ratio measured there, described
        (where its prediction is extrapolated); () for dense or a covered schedule."""
        if not ratios:
            return ()
        return tuple(
            f"stage {loc} at {r:.3g} < {self.stages[loc][0][0]:g} (lowest measured)"
            for loc, r in zip(locs, ratios, strict=True)
            if r < self.stages[loc][0][0] - 1e-9
        )

    def measured_range(self, locs: tuple[int, ...]) -> str:
        """The lowest keep ratio measured per stage, for messages."""
        return ", ".join(f"stage {loc} ≥ {self.stages[loc][0][0]:g}" for loc in locs)

    def check_locs(self, locs: tuple[int, ...], path: str) -> None:
        missing = [loc for loc in locs if loc not in self.stages]
        if missing:
            raise EdgepruneError(
                f"sensitivity file {path} has no curve for pruning location(s) {missing}",
                f"it has: {sorted(self.stages)}",
            )


#: an accuracy or agreement in % (a file in [0, 1] fits too)
Accuracy = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]


class StageCurveFile(Strict):
    keep_ratios: Annotated[
        list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]], Field(min_length=1)
    ]
    accuracy: list[Accuracy]

    @model_validator(mode="after")
    def _lists(self) -> StageCurveFile:
        if len(self.keep_ratios) != len(self.accuracy):
            raise PydanticCustomError("curve", "keep_ratios and accuracy differ in length")
        if any(b <= a for a, b in pairwise(self.keep_ratios)):
            raise PydanticCustomError("curve", "keep_ratios must strictly increase")
        return self


class SensitivityImagesFile(Strict):
    classes: Count | None = None
    read: Count | None = None
    images: Count | None = None


class SensitivityFile(Strict):
    """A sensitivity file (``schema`` checked before): what ``budget`` reads."""

    dense: Accuracy
    stages: dict[Annotated[str, Field(pattern=r"^[0-9]{1,4}$")], StageCurveFile]
    metric: str = "accuracy"
    indistinct: str | None = None
    images: SensitivityImagesFile | None = None


def load_sensitivity(path: str | Path) -> Sensitivity:
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"sensitivity file {path} does not exist")
    what = f"sensitivity file {path} is not valid"
    hint = (
        'expected {"schema": "edgeprune.sensitivity", "dense": ACC, '
        '"stages": {"LOC": {"keep_ratios": [...], "accuracy": [...]}}} with accuracies in % '
        "(0 to 100) and keep ratios in (0, 1]"
    )
    d = load_json(path, what, hint)
    if not isinstance(d, dict) or d.get("schema") != SENSITIVITY_SCHEMA:
        raise EdgepruneError(f"{what}: 'schema' is not '{SENSITIVITY_SCHEMA}'", hint)
    f = validate(SensitivityFile, d, what, hint)
    stages = {int(k): (tuple(v.keep_ratios), tuple(v.accuracy)) for k, v in f.stages.items()}
    why = f.indistinct if "indistinct" in d else _file_indistinct(d, f.dense, stages)
    return Sensitivity(f.dense, stages, f.metric, why or None)


def indistinct(
    values, chance: float | None = None, images: int | None = None, what: str = "value"
) -> str | None:
    """Why measured accuracies (in %) cannot tell schedules apart, or None: every value is
    the same (0.0 on random weights; 100 % agreement where no stage changes an answer),
    or — given the chance level (100 / classes) and the number of ``images`` — every
    value lies within two binomial standard deviations of chance (a model that guesses)."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    if max(vals) - min(vals) <= 1e-9:
        return f"every measured {what} is {vals[0]:.2f}"
    if chance is not None and images:
        p = chance / 100
        band = max(2 * 100 * math.sqrt(p * (1 - p) / images), 100 / images)
        if all(abs(v - chance) <= band for v in vals):
            return (
                f"every measured {what} is at chance level ({chance:.1f} % ± {band:.1f} over "
                f"{images} images: {min(vals):.1f}–{max(vals):.1f})"
            )
    return None


def _file_indistinct(d: dict, dense: float, stages: dict) -> str | None:
    """``indistinct`` for a file that does not record it (by hand, or an older edgeprune):
    the chance level is known for a top-1 file that names its classes and images."""
    values = [dense, *(y for _, ys in stages.values() for y in ys)]
    info = d.get("images") if isinstance(d.get("images"), dict) else {}
    classes, n = info.get("classes"), info.get("read", info.get("images"))
    top1 = d.get("metric") == "top1" and isinstance(classes, int) and classes > 1
    chance = 100 / classes if top1 else None
    what = str(d.get("metric") or "value")
    return indistinct(values, chance, n if isinstance(n, int) else None, what)


# ---- candidates ------------------------------------------------------------------------
@dataclass
class Candidate:
    keep_ratios: tuple[float, ...]
    plan: TokenPlan
    predicted_ms: float = math.nan
    kept_tokens: float = 0.0
    accuracy: float | None = None
    # ToMe: the tokens merged per block (its keep_ratios are what that keeps per stage)
    r_schedule: tuple[int, ...] | None = None

    def objective(self) -> float:
        return self.accuracy if self.accuracy is not None else self.kept_tokens

    @property
    def key(self) -> tuple:
        """What tells two schedules apart (a ToMe schedule is its r per block)."""
        return ("r", self.r_schedule) if self.r_schedule is not None else self.keep_ratios

    def method_options(self) -> dict:
        """The method options that build this schedule (ToMe: ``{"r": r_schedule}``)."""
        return {"r": self.r_schedule} if self.r_schedule is not None else {}

    def describe(self) -> str:
        """The schedule in words: ``r [..]`` (ToMe) or ``keep ratios [..]``."""
        if self.r_schedule is not None:
            return f"r {list(self.r_schedule)}"
        return f"keep ratios {[round(r, 4) for r in self.keep_ratios]}"


def kept_tokens(plan: TokenPlan) -> float:
    """The accuracy proxy: Σ over blocks of the tokens attention and MLP see, halved."""
    return sum(a + m for a, m in zip(plan.attn_tokens, plan.mlp_tokens, strict=True)) / 2


def _grid(step: float) -> list[float]:
    n = round(1 / step)
    return [round(i * step, 6) for i in range(1, n + 1)]


def _free_tuples(values: list[float], n: int, cumulative: bool) -> list[tuple[float, ...]]:
    if cumulative:  # non-increasing tuples
        return list(itertools.combinations_with_replacement(sorted(values, reverse=True), n))
    return list(itertools.product(values, repeat=n))


def _count(g: int, n: int, cumulative: bool) -> int:
    return math.comb(g + n - 1, n) if cumulative else g**n


def _plans(method: Method, arch: Arch, locs: tuple[int, ...], ratio_sets) -> dict[tuple, Candidate]:
    """Candidates keyed by their token counts (schedules giving the same plan merge)."""
    out: dict[tuple, Candidate] = {}
    for ratios in ratio_sets:
        try:
            plan = method.token_plan(arch, MethodConfig(tuple(locs), tuple(ratios), {}))
        except (EdgepruneError, ValueError):
            continue
        key = (plan.attn_tokens, plan.mlp_tokens, tuple(s.tokens_in for s in plan.selectors))
        if key not in out:
            out[key] = Candidate(tuple(ratios), plan)
    return out


def _evaluate(
    model: LatencyModel, cands: list[Candidate], locs, sens: Sensitivity | None, extrapolate=False
) -> None:
    ms = model.predict_many([c.plan for c in cands])
    schedules = [c.keep_ratios for c in cands]
    acc = sens.predict_many(tuple(locs), schedules, extrapolate) if sens else None
    for i, (c, t) in enumerate(zip(cands, ms.tolist(), strict=True)):
        c.predicted_ms = t
        c.kept_tokens = kept_tokens(c.plan)
        if acc is not None:
            c.accuracy = acc[i]


def tome_schedules(arch: Arch, schedule: str) -> list[tuple[int, ...]]:
    """ToMe's r schedules a search weighs (``geometric``: constant r; ``free``: ToMe's
    shapes at every INFLECTIONS), each clamped as ToMe runs it, distinct, none all 0."""
    n0, depth = arch.num_tokens, arch.depth
    bends = (0.0,) if schedule == "geometric" else INFLECTIONS
    out: dict[tuple[int, ...], None] = {}
    for r in range(1, (n0 - 1) // 2 + 1):
        for bend in bends:
            rs = tuple(clamp_schedule(n0, inflected(r, bend, depth)))
            if any(rs):
                out.setdefault(rs, None)
    return list(out)


def _tome_candidates(model: LatencyModel, meth: Method, schedule: str) -> list[Candidate]:
    """ToMe's schedules (``tome_schedules``) as candidates, evaluated on the table."""
    arch = model.arch
    cands = []
    for rs in tome_schedules(arch, schedule):
        cfg = meth.config_for(rs, arch)
        cands.append(Candidate(cfg.keep_ratios, meth.token_plan(arch, cfg), r_schedule=rs))
    _evaluate(model, cands, (), None)
    return cands


def merges_tokens(meth: Method) -> bool:
    """Whether the method's schedule is r tokens merged per block (ToMe), not keep ratios."""
    return meth.name == "tome"


def _best(cands: list[Candidate], target: float) -> Candidate | None:
    ok = [c for c in cands if c.predicted_ms <= target]
    if not ok:
        return None
    return max(ok, key=lambda c: (c.objective(), -c.predicted_ms, sum(c.keep_ratios)))


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both latency (lower) and objective (higher)."""
    front, best = [], -math.inf
    for c in sorted(cands, key=lambda c: (c.predicted_ms, -c.objective())):
        if c.objective() > best:
            front.append(c)
            best = c.objective()
    return front


# ---- the margin ------------------------------------------------------------------------
def resolve_margin(text: str | None, table) -> tuple[float, str]:
    """``--margin``: ``auto`` (default: the table's measured error, ``measured_error``), a
    percentage (``3%``) or a fraction (``0.03``); ``0`` aims at the target itself.

    ``auto`` refuses a table whose measured error is above MAX_AUTO_MARGIN: a margin that
    large gives away most of what pruning buys, and one capped below the error does not
    cover it. A given margin is echoed with the table's measured error beside it."""
    t = (text or "auto").strip().lower()
    err, parts = measured_error(table)
    what = ", ".join(f"{k} {v:.1%}" for k, v in parts.items())
    if t == "auto":
        if not parts:
            return 0.0, "auto: the table records no measured error (profiled before 0.2)"
        if err > MAX_AUTO_MARGIN:
            raise EdgepruneError(
                f"the table's measured error is {err:.0%} ({what}), above the "
                f"{MAX_AUTO_MARGIN:.0%} an automatic margin can absorb",
                "measure a better table (a quieter machine, more runs) or give --margin",
            )
        return err, f"auto: the table's measured error ({what})"
    try:
        m = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise EdgepruneError(
            f"--margin '{text}' is not auto, a percentage or a fraction", "e.g. --margin 3%"
        ) from None
    if not (math.isfinite(m) and 0 <= m <= MAX_MARGIN):
        raise EdgepruneError(f"--margin '{text}' must lie in 0..{MAX_MARGIN:.0%}")
    return m, f"given: --margin {text.strip()}" + (
        f"; the table's measured error is {err:.1%} ({what})" if parts else ""
    )


# ---- the search ------------------------------------------------------------------------
class UnreachableTarget(EdgepruneError):
    """Even the fastest schedule's prediction misses the target (less the margin)."""


@dataclass(kw_only=True)
class BudgetResult:
    """What a search chose, with what it weighed (``candidates``) and aimed at."""

    method: str
    arch: Arch
    locs: tuple[int, ...]
    schedule: str
    target_ms: float
    chosen: Candidate
    dense_ms: float
    fastest: Candidate
    status: str  # "ok" or "dense" (the dense model already meets the target)
    candidates: list[Candidate] = field(default_factory=list)
    objective: str = "kept_tokens"
    margin: float = 0.0  # the prediction aims this fraction under the target
    margin_source: str = "none"  # where the margin came from (see resolve_margin)
    # predictions × scale meet the target: the table re-anchored to the machine now
    # (dense measured / dense predicted; 1: the table's own predictions)
    scale: float = 1.0
    # the chosen schedule's stages below the sensitivity file's measured keep ratios
    # (search(extrapolate=True) only): its predicted accuracy is extrapolated there
    extrapolated: tuple[str, ...] = ()

    @property
    def aim_ms(self) -> float:
        return self.target_ms * (1 - self.margin)

    @property
    def predicted_ms(self) -> float:
        """The chosen schedule's prediction, re-anchored (the table's × ``scale``)."""
        return self.chosen.predicted_ms * self.scale

    @property
    def margin_ms(self) -> float:
        return self.target_ms - self.predicted_ms

    @property
    def front(self) -> list[Candidate]:
        """The candidates' Pareto front (``pareto_front``)."""
        return pareto_front(self.candidates)

    def gflops(self) -> float:
        m = get_method(self.chosen.plan.method)
        return plan_flops(self.chosen.plan, m.selector_macs(self.arch, self.chosen.plan)).total


def search(
    model: LatencyModel,
    target_ms: float,
    method: str = "dynamicvit",
    schedule: str = "geometric",
    locs: tuple[int, ...] | None = None,
    sensitivity: Sensitivity | None = None,
    *,
    sensitivity_path: str = "<sensitivity>",
    margin: float = 0.0,
    margin_source: str = "none",
    scale: float = 1.0,
    extrapolate: bool = False,
) -> BudgetResult:
    """The keep schedule with the highest objective whose predicted latency ≤ the target
    less ``margin`` (a fraction: the table's own measured error, see ``resolve_margin``),
    each prediction × ``scale`` (the table re-anchored to the machine now; 1: as is).
    With a sensitivity file, only schedules within its measured keep ratios are weighed,
    unless ``extrapolate`` (the result's ``extrapolated`` names the stages below them).

    Raises UnreachableTarget when even the fastest schedule misses it."""
    _check_search(target_ms, margin, scale, schedule)
    aim = target_ms * (1 - margin) / scale  # in the table's own terms
    arch = model.arch
    meth, locs, cands, within = _candidates(
        model, method, schedule, locs, sensitivity, sensitivity_path=sensitivity_path,
        extrapolate=extrapolate, aim=aim,
    )  # fmt: skip

    dense_ms = float(model.predict(dense_plan(arch)).total_ms)
    fastest = min(cands, key=lambda c: c.predicted_ms)
    common = dict(
        method=meth.name, arch=arch, locs=locs, schedule=schedule, target_ms=target_ms,
        dense_ms=dense_ms, fastest=fastest, candidates=cands, margin=margin,
        objective=f"predicted {sensitivity.metric}" if sensitivity else "kept_tokens",
        margin_source=margin_source, scale=scale,
    )  # fmt: skip
    if dense_ms <= aim:
        return BudgetResult(chosen=_dense(arch, dense_ms, sensitivity), status="dense", **common)
    best = _best(cands, aim)
    if best is None:
        raise _unreachable(
            method, aim, locs=locs, target_ms=target_ms, dense_ms=dense_ms, fastest=fastest,
            margin=margin, scale=scale, within=within,
        )  # fmt: skip
    meth.validate(MethodConfig(best.plan.prune_locs, best.keep_ratios, best.method_options()), arch)
    out = sensitivity.outside(locs, best.keep_ratios) if sensitivity else ()
    return BudgetResult(chosen=best, status="ok", extrapolated=out, **common)


def _candidates(
    model: LatencyModel,
    method: str,
    schedule: str,
    locs,
    sensitivity,
    *,
    sensitivity_path: str,
    extrapolate: bool,
    aim: float,
) -> tuple[Method, tuple[int, ...], list[Candidate], str]:
    """The method, its locations, the candidates evaluated on the table, and what the
    search kept to (for the unreachable error)."""  # fmt: skip
    meth = get_method(method)
    if merges_tokens(meth):
        if locs is not None:
            raise EdgepruneError(
                "ToMe merges in every block: it has no --locs", "drop --locs for --method tome"
            )
        if sensitivity is not None:
            raise EdgepruneError(
                "a sensitivity file measures keep ratios; ToMe's schedules are over r",
                "drop --sensitivity for --method tome (its schedules are weighed by kept tokens)",
            )
        return meth, (), _tome_candidates(model, meth, schedule), ""
    meth, locs = _method_at(method, locs, model.arch)
    if sensitivity is not None:
        sensitivity.check_locs(locs, sensitivity_path)
    space = _Space(model, meth, locs, sensitivity, extrapolate)
    cands = space.geometric() if schedule == "geometric" else space.free(aim)
    if not cands:
        raise EdgepruneError(f"no valid keep schedule of {method} at locations {list(locs)}")
    return meth, locs, cands, space.within()


def _check_search(target_ms: float, margin: float, scale: float, schedule: str) -> None:
    """Refuse a target, margin, re-anchoring scale or schedule out of range."""
    if not (math.isfinite(target_ms) and target_ms > 0):
        raise EdgepruneError(f"target {target_ms} ms is not a positive finite number")
    if not 0 <= margin <= MAX_MARGIN:
        raise EdgepruneError(f"--margin {margin:.1%} must lie in 0..{MAX_MARGIN:.0%}")
    if not (math.isfinite(scale) and scale > 0):
        raise EdgepruneError(f"re-anchoring scale {scale} is not a positive finite number")
    check_schedule(schedule)


def check_schedule(schedule: str) -> None:
    """Refuse an unknown ``--schedule``."""
    if schedule not in SCHEDULES:
        raise EdgepruneError(
            f"unknown --schedule '{schedule}'", f"expected: {', '.join(SCHEDULES)}"
        )


def _method_at(method: str, locs: tuple[int, ...] | None, arch: Arch) -> tuple[Method, tuple]:
    """The pruning method and its locations (default: the method's), validated."""
    meth = get_method(method)
    if meth.name == "dense":
        raise EdgepruneError("the dense model has no keep ratios to budget", "pass --method")
    locs = tuple(locs) if locs is not None else tuple(meth.default_locs)
    meth.validate(MethodConfig(locs, tuple(1.0 for _ in locs)), arch)
    return meth, locs


@dataclass(frozen=True)
class _Space:
    """The schedules a search weighs: a method's keep ratios at ``locs``, each
    candidate evaluated on the latency model (and the sensitivity file)."""

    model: LatencyModel
    meth: Method
    locs: tuple[int, ...]
    sensitivity: Sensitivity | None
    extrapolate: bool = False  # weigh schedules below the sensitivity file's measured ratios

    def allowed(self, ratio_sets) -> list:
        """``ratio_sets`` within the sensitivity file's measured keep ratios (all of them
        without a file, or with ``extrapolate``)."""
        sens = self.sensitivity
        if sens is None or self.extrapolate:
            return list(ratio_sets)
        return [r for r in ratio_sets if sens.covers(self.locs, tuple(r))]

    def within(self) -> str:
        """What the search kept to, for the unreachable error ("": everything)."""
        if self.sensitivity is None or self.extrapolate:
            return ""
        return self.sensitivity.measured_range(self.locs)

    def evaluated(self, ratio_sets) -> dict[tuple, Candidate]:
        """Candidates of ``ratio_sets`` (those ``allowed``) keyed by their token counts,
        evaluated."""
        out = _plans(self.meth, self.model.arch, self.locs, self.allowed(ratio_sets))
        _evaluate(self.model, list(out.values()), self.locs, self.sensitivity, self.extrapolate)
        return out

    def geometric(self) -> list[Candidate]:
        """``geometric``: one ratio r on a 0.001 grid, ``[r, r², r³…]`` (or ``[r, r…]``)."""
        n = len(self.locs)
        sets = [geometric(i / 1000, n, self.meth.cumulative) for i in range(1, 1001)]
        return list(self.evaluated(sets).values())

    def free(self, aim: float) -> list[Candidate]:
        """``free``: every stage on the finest grid within MAX_FREE_CANDIDATES, then a
        quarter step around the best point under ``aim`` (when the refinement fits)."""
        n, cumulative = len(self.locs), self.meth.cumulative
        step = next(
            (
                s
                for s in (0.02, 0.025, 0.05, 0.1, 0.125, 0.2, 0.25, 0.5)
                if _count(round(1 / s), n, cumulative) <= MAX_FREE_CANDIDATES
            ),
            1.0,
        )
        cands = list(self.evaluated(_free_tuples(_grid(step), n, cumulative)).values())
        best = _best(cands, aim)
        if best is not None and 9**n <= MAX_FREE_CANDIDATES:
            cands += self._around(best, step / 4, cands)
        return cands

    def _around(self, best: Candidate, fine: float, cands: list[Candidate]) -> list[Candidate]:
        """The new candidates within four ``fine`` steps of ``best`` in every stage."""
        around = [
            [round(r + k * fine, 6) for k in range(-4, 5) if 0 < round(r + k * fine, 6) <= 1]
            for r in best.keep_ratios
        ]
        sets = [
            t
            for t in itertools.product(*around)
            if not self.meth.cumulative or all(b <= a for a, b in zip(t, t[1:], strict=False))
        ]
        known = {(c.plan.attn_tokens, c.plan.mlp_tokens) for c in cands}
        fresh = _plans(self.meth, self.model.arch, self.locs, self.allowed(sets))
        extra = [c for k, c in fresh.items() if k[:2] not in known]
        _evaluate(self.model, extra, self.locs, self.sensitivity, self.extrapolate)
        return extra


def _dense(arch: Arch, dense_ms: float, sensitivity: Sensitivity | None) -> Candidate:
    """The dense model as a candidate (it already meets the target)."""
    dense = Candidate((), dense_plan(arch), dense_ms, kept_tokens(dense_plan(arch)))
    if sensitivity is not None:
        dense.accuracy = sensitivity.dense
    return dense


def _unreachable(
    method: str,
    aim: float,
    *,
    locs: tuple[int, ...],
    target_ms: float,
    dense_ms: float,
    fastest: Candidate,
    margin: float,
    scale: float,
    within: str = "",
) -> UnreachableTarget:
    """The error: even the fastest schedule of ``method`` misses ``aim`` (the target
    less the margin, in the table's terms); ``within``: the sensitivity file's measured
    keep ratios the search kept to."""
    less = f" less the {margin:.1%} margin ({aim * scale:.3f} ms)" if margin else ""
    fast = fastest.predicted_ms * scale
    where = "on this profile"
    if within:
        where += f" within the sensitivity file's measured keep ratios ({within})"
    if scale != 1.0:
        where = (
            f"on this profile re-anchored to this machine now (dense measured "
            f"{dense_ms * scale:.3f} ms vs the table's {dense_ms:.3f} ms: predictions "
            f"× {scale:.3f})"
        )
    return UnreachableTarget(
        f"target {target_ms:.3f} ms{less} is unreachable {where}: the fastest "
        f"{method} schedule ({_schedule_text(fastest, locs)}) predicts "
        f"{fast:.3f} ms (dense {dense_ms * scale:.3f} ms)",
        f"ask for at least {fast:.3f} ms"
        + (", or prune at more locations" if fastest.r_schedule is None else "")
        + (", or measure lower keep ratios (or --extrapolate)" if within else ""),
    )


def _schedule_text(c: Candidate, locs: tuple[int, ...]) -> str:
    if c.r_schedule is not None:
        return c.describe()
    return f"{fmt_ratios(c.keep_ratios)} at {list(locs)}"


def fmt_ratios(ratios) -> str:
    return "[" + ", ".join(f"{r:.4g}" for r in ratios) + "]"


def stage_schedule(n: int, s: int, r: float, cumulative: bool) -> tuple[float, ...]:
    """Keep ratios with stage ``s`` at ``r`` and the other stages not pruning."""
    if cumulative:
        return tuple(1.0 if i < s else r for i in range(n))
    return tuple(r if i == s else 1.0 for i in range(n))


# ---- budget --sensitivity: its plot's measured points (edgeprune.render.plots) and summary ------
def measured_curves(result, sens, model) -> list[tuple[int, list[float], list[float]]]:
    """Per stage: the predicted latency and measured accuracy of its single-stage
    schedules (the points the sensitivity file holds)."""
    meth = get_method(result.method)
    out = []
    n = len(result.locs)
    for s, loc in enumerate(result.locs):
        xs, ys = sens.stages[loc]
        plans, acc = [], []
        for r, y in zip(xs, ys, strict=True):
            keep = stage_schedule(n, s, r, meth.cumulative)
            try:
                plans.append(meth.token_plan(result.arch, MethodConfig(result.locs, keep, {})))
            except EdgepruneError:
                continue
            acc.append(y)
        if plans:
            out.append((loc, [float(v) for v in model.predict_many(plans)], acc))
    return out


def chosen_summary(result, sens) -> str:
    """One line naming the point ``budget --sensitivity`` chose on the front."""
    ch = result.chosen
    front = pareto_front(result.candidates)
    on = any(c.keep_ratios == ch.keep_ratios for c in front) or result.status == "dense"
    name = (
        "dense" if not ch.keep_ratios else "[" + ", ".join(f"{r:.3g}" for r in ch.keep_ratios) + "]"
    )
    beyond = (
        f"; EXTRAPOLATED below the measured keep ratios ({'; '.join(result.extrapolated)})"
        if result.extrapolated
        else ""
    )
    return (
        f"chosen point: {name} at {ch.predicted_ms:.3f} ms, predicted {sens.metric} "
        f"{ch.objective():.2f} (dense {sens.dense:.2f} at {result.dense_ms:.3f} ms); "
        f"{'on' if on else 'off'} the Pareto front of {len(front)} schedules{beyond}"
    )
