"""``edgeprune budget --verify``: is the budget met when the chosen schedule is measured?

The dense backbone is exported (the real static graph, parity-checked) for the runtime
the latency table was measured with and loaded in that runtime's runner on this
machine. Re-anchoring (default): the dense model is timed first (``ANCHOR_ROUNDS``
bursts); the machine's speed drifts, so the whole table can be off by a constant
factor by now, and the search is run again with every prediction × scale (dense
measured now / dense predicted), so that the schedule chosen is the one whose
re-anchored prediction meets the target. Then the chosen schedule is exported and
timed against dense interleaved in one process (steady-state bursts, as
``validate-profile`` times). The budget is met only when the measured median of the
pruned model is within the target; the prediction error and the machine's drift
since profiling are reported beside it.

A machine can also change speed *during* the check (a shared VM's second core slowed
from outside, thermal throttling): the pick and dense, timed interleaved, move
together, so their ratio holds. ``at_anchor_speed`` puts the pick back at the
machine's speed when the table was re-anchored. When dense moved by more than
MOVED_NOTE, the refinement step decides and re-scales on that figure, not on the raw
one, so it corrects the table's error and does not chase the machine
(``refine_basis``). The verdict stays the raw measurement.

The refinement lands on the aim: the schedule that keeps the most while measuring
under the target, within ``tolerance`` (REFINE_BAND) of it. A pick outside the band is
chosen again on its own measurement (the table × measured / predicted, a secant step);
once one pick measured under the target and another over it, the next is the search's
pick at the midpoint of their table predictions (a bisection). It stops at the first
pick within the band, when no new schedule lies between, or after REFINE_ROUNDS more
picks, and verifies the measured pick that keeps the most under the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgeprune.budget.search import BudgetResult, UnreachableTarget
from edgeprune.core.backends.runner import get_runner
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.plan import dense_plan
from edgeprune.core.records import record
from edgeprune.core.source import resolve
from edgeprune.latency.model import LatencyModel
from edgeprune.profiling.validate import LocalModels, check_local_runtime
from edgeprune.runtimes.timing import Timing

ANCHOR_ROUNDS = 20  # bursts of the dense model timed to re-anchor the table
# a re-anchored pick measured over the target, or more than REFINE_BAND under it, is
# refined: chosen again with the scale its own measurement gives, aiming REFINE_MARGIN
# under the target (at most half the band: what is left to cover then is one
# measurement's noise, not the table's), then by bisection; at most REFINE_ROUNDS picks
# are measured after the first
REFINE_BAND = 0.05
REFINE_MARGIN = 0.02
REFINE_ROUNDS = 4
BISECT_STEPS = 40  # searches (no measurement) to find a new schedule between two picks
# the machine's own speed changed by more than this between re-anchor and measurement:
# the verification says so, with the pick's time at the anchor's speed
MOVED_NOTE = 0.05


def at_anchor_speed(pick_ms: float, dense_ms: float, anchor: Anchor | None) -> float:
    """The pick's measured time at the machine's speed when the table was re-anchored:
    pick × dense at the anchor / dense measured beside the pick (interleaved, so both
    saw the same machine). Without an anchor: the measurement itself."""
    return pick_ms if anchor is None else pick_ms * anchor.dense_measured_ms / dense_ms


def moved(dense_ms: float, anchor: Anchor | None) -> float | None:
    """How far the machine moved since the re-anchor: dense measured now / dense at the
    anchor − 1 (None: not re-anchored)."""
    return None if anchor is None else dense_ms / anchor.dense_measured_ms - 1


def steady(moved_by: float | None) -> bool:
    """Whether the machine held its speed since the re-anchor (``moved`` within
    MOVED_NOTE), or there was no re-anchor."""
    return moved_by is None or abs(moved_by) <= MOVED_NOTE


def refine_basis(pick_ms: float, dense_ms: float, anchor: Anchor | None) -> float:
    """The figure the refinement decides and re-scales on: the measurement itself while
    dense, timed beside the pick, is within MOVED_NOTE of the anchor (a steady machine:
    what is left is the table's error, or a real cost of running interleaved); the pick
    at the anchor's speed when the machine moved more (the raw figure would chase it)."""
    if steady(moved(dense_ms, anchor)):
        return pick_ms
    return at_anchor_speed(pick_ms, dense_ms, anchor)


def needs_refining(pick_ms: float, target_ms: float, tolerance: float = REFINE_BAND) -> bool:
    """Whether a re-anchored pick (its ``refine_basis`` figure) is over the target or
    more than ``tolerance`` under it."""
    return not -tolerance <= pick_ms / target_ms - 1 <= 0


def choice(result: BudgetResult | None) -> dict | None:
    """What a search chose, for the record: status, keep ratios, the table's prediction
    and the re-anchored one (× the result's scale). None: the target was unreachable."""
    if result is None:
        return None
    return {
        "status": result.status,
        "keep_ratios": list(result.chosen.keep_ratios),
        **({"r_schedule": list(r)} if (r := result.chosen.r_schedule) is not None else {}),
        "table_predicted_ms": result.chosen.predicted_ms,
        "predicted_ms": result.predicted_ms,
    }


@dataclass(frozen=True, kw_only=True)
class Anchor:
    """The table re-anchored to the machine now: dense timed alone before the search."""

    dense_table_ms: float  # the table's dense prediction
    dense_measured_ms: float  # dense measured here at anchor time
    rounds: int
    burst: int
    table_choice: dict | None  # what the table alone picks (None: unreachable on it)
    choice: dict  # what the re-anchored search picks

    @property
    def scale(self) -> float:
        return self.dense_measured_ms / self.dense_table_ms

    def to_dict(self) -> dict:
        return record(
            self, "dense_table_ms dense_measured_ms scale rounds burst table_choice choice"
        )


@dataclass(frozen=True, kw_only=True)
class Verification:
    """``budget --verify``'s measurement of the verified schedule, against dense."""

    target_ms: float
    predicted_ms: float  # the verified schedule's prediction, re-anchored (× scale)
    table_predicted_ms: float  # the same from the table alone
    measured_ms: float
    measured_p90_ms: float
    dense_predicted_ms: float
    dense_measured_ms: float
    runtime: str
    threads: int
    rounds: int
    burst: int
    reanchor: Anchor | None = None  # None: --no-reanchor
    # the re-anchored pick missed the band: what it was and measured, the new scale
    refined: dict | None = None
    conditions: dict | None = None  # this machine while measuring (``runtimes.conditions``)
    # the measured median's 95 % interval (None: too few runs for one), and whether it
    # got within the timing tolerance
    measured_ci_ms: tuple[float, float] | None = None
    converged: bool | None = None

    @property
    def met(self) -> bool:
        return self.measured_ms <= self.target_ms

    @property
    def steady(self) -> bool:
        """The machine held its speed since the re-anchor (``steady``)."""
        return steady(self.moved)

    @property
    def error(self) -> float:
        """(measured − predicted) / measured, for the chosen schedule."""
        return (self.measured_ms - self.predicted_ms) / self.measured_ms

    @property
    def vs_target(self) -> float:
        """(measured − target) / target: negative when the budget is met."""
        return self.measured_ms / self.target_ms - 1

    @property
    def drift(self) -> float:
        """The machine now against the table: dense measured / dense predicted − 1."""
        return self.dense_measured_ms / self.dense_predicted_ms - 1

    @property
    def speedup(self) -> float:
        return self.dense_measured_ms / self.measured_ms

    @property
    def moved(self) -> float | None:
        """The machine during the check: dense measured beside the pick / dense at the
        re-anchor − 1 (None: not re-anchored)."""
        return moved(self.dense_measured_ms, self.reanchor)

    @property
    def at_anchor_ms(self) -> float | None:
        """The pick at the machine's speed when the table was re-anchored
        (``at_anchor_speed``; None: not re-anchored)."""
        if self.reanchor is None:
            return None
        return at_anchor_speed(self.measured_ms, self.dense_measured_ms, self.reanchor)

    @property
    def at_anchor_vs_target(self) -> float | None:
        a = self.at_anchor_ms
        return None if a is None else a / self.target_ms - 1

    def to_dict(self) -> dict:
        return {
            **record(
                self,
                "met target_ms predicted_ms table_predicted_ms measured_ms measured_p90_ms "
                "rel_error=error vs_target dense_predicted_ms dense_measured_ms drift speedup "
                "moved at_anchor_ms at_anchor_vs_target runtime threads rounds burst",
            ),
            "reanchor": self.reanchor.to_dict() if self.reanchor else None,
            "refined": self.refined,
            "conditions": self.conditions,
            "measured_ci_ms": list(self.measured_ci_ms) if self.measured_ci_ms else None,
            "converged": self.converged,
        }


def verify_budget(
    model: LatencyModel,
    choose: Callable[..., BudgetResult],
    table_result: BudgetResult | None,
    *,
    rounds: int = 30,
    burst: int = 3,
    threads: int | None = None,
    reanchor: bool = True,
    progress: Callable[[str], None] | None = None,
    tolerance: float = REFINE_BAND,
    refine_rounds: int = REFINE_ROUNDS,
    models: Callable[..., LocalModels] = LocalModels,
) -> tuple[BudgetResult, Verification]:
    """Export dense; with ``reanchor``, time it and choose again with
    ``choose(scale=…)`` (the budget search, ``budget.search`` with its target, margin,
    method… bound); export the chosen schedule, time it and dense interleaved here,
    compare; with ``reanchor``, refine a pick outside ``tolerance`` under the target (at
    most ``refine_rounds`` more picks measured; see the module). ``table_result``: what
    the table alone chose (None: unreachable on it, allowed only with ``reanchor``).
    ``models``: how the models are exported, loaded and timed here (``LocalModels``).
    Returns the verified result and the verification."""

    if rounds < 3:
        raise EdgepruneError(f"--rounds {rounds} must be at least 3")
    runtime = check_local_runtime(model, "budget --verify")
    tb = model.table
    threads = threads or int(tb.device.get("threads") or 1)
    step = progress or (lambda _m: None)
    kernels = bool(tb.device.get("custom_kernels"))
    with models(runtime, threads, tb.batch, progress, kernels) as here:
        dense = here.load(resolve(model.arch.name), "the dense model")
        check = _Check(
            here=here, dense=dense, rounds=rounds, burst=burst, step=step, tolerance=tolerance,
            refine_rounds=refine_rounds,
        )  # fmt: skip
        anchor, result = None, table_result
        if reanchor:
            anchor, result = check.reanchor(model, choose, table_result)
        if result is None:
            raise ValueError("verify_budget needs the table's own choice without reanchor")
        measured = check.measure(choose, result, anchor, refine=reanchor)
    return measured.result, _verification(measured, runtime, threads, anchor, rounds, burst)


def _verification(
    measured: _Measured, runtime: str, threads: int, anchor: Anchor | None, rounds: int, burst: int
) -> Verification:
    """What ``verify_budget`` reports about the schedule ``measured``."""
    pick = measured.pick
    return Verification(
        target_ms=measured.result.target_ms,
        predicted_ms=measured.result.predicted_ms,
        table_predicted_ms=measured.result.chosen.predicted_ms,
        measured_ms=pick.median_ms,
        measured_p90_ms=pick.p90_ms,
        measured_ci_ms=(pick.ci_low_ms, pick.ci_high_ms) if pick.ci_low_ms is not None else None,
        converged=pick.converged,
        dense_predicted_ms=measured.result.dense_ms,
        dense_measured_ms=measured.dense.median_ms,
        runtime=f"{runtime} {get_runner(runtime, threads=threads).version()}",
        threads=threads,
        rounds=rounds,
        burst=burst,
        reanchor=anchor,
        refined=measured.refined,
    )


@dataclass(frozen=True, kw_only=True)
class _Measured:
    """The schedule verified, its timing and dense's beside it, and the refinement."""

    result: BudgetResult
    pick: Timing
    dense: Timing
    refined: dict | None = None


@dataclass(frozen=True, kw_only=True)
class _Tried:
    """One schedule measured: its search result, its timing and dense's beside it, and
    the figure the refinement decides on (``refine_basis``)."""

    result: BudgetResult
    pick: Timing
    dense: Timing
    basis_ms: float

    @property
    def table_ms(self) -> float:
        return self.result.chosen.predicted_ms

    def record(self, anchor: Anchor | None) -> dict:
        return {
            **choice(self.result), "scale": self.result.scale,
            "measured_ms": self.pick.median_ms, "dense_measured_ms": self.dense.median_ms,
            "at_anchor_ms": at_anchor_speed(self.pick.median_ms, self.dense.median_ms, anchor),
            "basis_ms": self.basis_ms,
        }  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class _Check:
    """The models of one verification, loaded here: dense, and the picks timed beside it."""

    here: LocalModels
    dense: object  # the dense model's loaded runner
    rounds: int
    burst: int
    step: Callable[[str], None]
    tolerance: float = REFINE_BAND
    refine_rounds: int = REFINE_ROUNDS

    def reanchor(
        self, model: LatencyModel, choose: Callable[..., BudgetResult], table_result
    ) -> tuple[Anchor, BudgetResult]:
        """Time dense alone and choose again on the table × (dense now / predicted)."""
        self.step(f"re-anchoring: timing the dense model, {ANCHOR_ROUNDS} bursts")
        (now,) = self.here.time([self.dense], ANCHOR_ROUNDS, self.burst)
        dense_table = float(model.predict(dense_plan(model.arch)).total_ms)
        result = choose(scale=now.median_ms / dense_table)
        anchor = Anchor(
            dense_table_ms=dense_table, dense_measured_ms=now.median_ms, rounds=ANCHOR_ROUNDS,
            burst=self.burst, table_choice=choice(table_result), choice=choice(result),
        )  # fmt: skip
        return anchor, result

    def time_pick(self, result: BudgetResult, what: str) -> tuple[Timing, Timing]:
        """Load the schedule ``result`` chose and time it and dense interleaved."""
        pruned = self.here.load(_source(result), f"the {what} schedule, {result.chosen.describe()}")
        t_pruned, t_dense = self.here.time([pruned, self.dense], self.rounds, self.burst)
        return t_pruned, t_dense

    def tried(self, result: BudgetResult, anchor: Anchor | None, what: str) -> _Tried:
        """Time the schedule ``result`` chose (``time_pick``) and judge it."""
        pick, dense = self.time_pick(result, what)
        basis = refine_basis(pick.median_ms, dense.median_ms, anchor)
        return _Tried(result=result, pick=pick, dense=dense, basis_ms=basis)

    def measure(
        self, choose, result: BudgetResult, anchor: Anchor | None, *, refine: bool
    ) -> _Measured:
        """Time the pick; with ``refine``, while the picks land outside the band, choose
        again (``_Aim.next``) and time that one, and verify the best (``_Aim.best``)."""
        first = self.tried(result, anchor, "chosen")
        aim = _Aim(choose=choose, target_ms=result.target_ms, tolerance=self.tolerance)
        aim.tried.append(first)
        if refine:
            for _ in range(self.refine_rounds):
                if aim.on_aim(aim.tried[-1]) or (again := aim.next(self.step)) is None:
                    break
                aim.tried.append(self.tried(again, anchor, "refined"))
        best = aim.best()
        refined = aim.record(best, anchor) if len(aim.tried) > 1 else None
        return _Measured(result=best.result, pick=best.pick, dense=best.dense, refined=refined)


@dataclass(kw_only=True)
class _Aim:
    """The refinement's way to the schedule that keeps the most under the target: the
    picks measured so far, and the next one to measure (secant, then bisection)."""

    choose: Callable[..., BudgetResult]
    target_ms: float
    tolerance: float
    tried: list[_Tried] = field(default_factory=list)

    @property
    def margin(self) -> float:
        """How far under the target the refinement aims: REFINE_MARGIN, at most half the
        band."""
        return min(REFINE_MARGIN, self.tolerance / 2)

    def on_aim(self, t: _Tried) -> bool:
        """Under the target and within ``tolerance`` of it."""
        return not needs_refining(t.basis_ms, self.target_ms, self.tolerance)

    def record(self, best: _Tried, anchor: Anchor | None) -> dict:
        """The verification's ``refined``: the first pick, the others measured, the
        verified one's scale, and whether it landed within the band."""
        return {
            "first": self.tried[0].record(anchor),
            "tries": [t.record(anchor) for t in self.tried[1:]],
            "scale": best.result.scale,
            "margin": self.margin,
            "tolerance": self.tolerance,
            "on_aim": self.on_aim(best),
        }

    def best(self) -> _Tried:
        """The pick measured under the target that keeps the most; when none is, the one
        that measured fastest."""
        under = [t for t in self.tried if t.basis_ms <= self.target_ms]
        if under:
            return max(under, key=lambda t: (t.result.chosen.objective(), -t.basis_ms))
        return min(self.tried, key=lambda t: t.basis_ms)

    def next(self, step) -> BudgetResult | None:
        """The next schedule to measure (None: nothing new to try). Between a pick under
        the target and one over it, the search's pick at the midpoint of their table
        predictions (``_bisect``); on one side only, the nearest pick re-scaled by its own
        measurement (``_refine``)."""
        under = [t for t in self.tried if t.basis_ms <= self.target_ms]
        over = [t for t in self.tried if t.basis_ms > self.target_ms]
        lo = max(under, key=lambda t: t.table_ms) if under else None
        hi = min(over, key=lambda t: t.table_ms) if over else None
        if lo is not None and hi is not None:
            return self._bisect(lo.table_ms, hi.table_ms, step)
        if hi is not None:
            return self._new(_refine(self.choose, hi.result, hi.basis_ms, step, self.margin))
        again = self._new(_refine(self.choose, lo.result, lo.basis_ms, step, self.margin))
        return again if again is not None else self._above(lo.table_ms, step)

    def _above(self, lo_ms: float, step) -> BudgetResult | None:
        """The first new schedule the search picks above table prediction ``lo_ms``
        (measured under the target, and re-scaled by its measurement it says nothing
        more fits: only a measurement over the target proves it); None: none."""
        for k in range(BISECT_STEPS):
            again = _at_table_ms(
                self.choose, self.target_ms, lo_ms * (1 + 1e-3 * 2**k), self.margin
            )
            if again is None or self._new(again) is not None:
                if again is not None:
                    step(f"refining: trying the next schedule above the table's {lo_ms:.3f} ms")
                return again
        return None

    def _new(self, again: BudgetResult | None) -> BudgetResult | None:
        """``again``, unless it is a schedule measured already (or None)."""
        known = {t.result.chosen.key for t in self.tried}
        return None if again is None or again.chosen.key in known else again

    def _bisect(self, lo_ms: float, hi_ms: float, step) -> BudgetResult | None:
        """The search's pick at the midpoint of table predictions ``lo_ms`` (measured
        under the target) and ``hi_ms`` (over it), halving toward ``hi_ms`` while the
        midpoint gives back a schedule measured already; None when none lies between."""
        for _ in range(BISECT_STEPS):
            mid = (lo_ms + hi_ms) / 2
            if hi_ms - lo_ms <= 1e-5 * hi_ms:  # too narrow to hold a schedule worth timing
                return None
            again = _at_table_ms(self.choose, self.target_ms, mid, self.margin)
            if again is None:
                return None
            if self._new(again) is not None:
                step(f"refining: bisecting between the table's {lo_ms:.3f} and {hi_ms:.3f} ms")
                return again
            lo_ms = mid  # nothing new at or under mid: the next schedule lies above it
        return None


def _at_table_ms(choose, target_ms: float, table_ms: float, margin: float) -> BudgetResult | None:
    """The search's pick whose table prediction is at most ``table_ms`` (the table ×
    target (1 − margin) / table_ms meets the target less the margin). None: dense or
    nothing meets it."""
    try:
        again = choose(scale=target_ms * (1 - margin) / table_ms, margin=margin,
                       margin_source="refine")  # fmt: skip
    except UnreachableTarget:
        return None
    return None if again.status == "dense" else again


def _source(result: BudgetResult):
    """The model a search result chose: dense, or its method at the chosen schedule."""

    arch = result.arch.name
    if result.status == "dense":
        return resolve(arch)
    c = result.chosen
    if c.r_schedule is not None:  # ToMe: its r per block
        return resolve(f"{arch}:{result.method}", method_options=c.method_options())
    return resolve(f"{arch}:{result.method}", keep=c.keep_ratios, locs=result.locs)


def _refine(
    choose, result: BudgetResult, measured_ms: float, step, margin: float = REFINE_MARGIN
) -> BudgetResult | None:
    """Choose again with the scale the chosen schedule's own measurement gives
    (``refine_basis`` / its table prediction), ``margin`` under the target. None:
    nothing new to try (the same schedule, dense, or no schedule meets the target at
    that scale)."""

    scale = measured_ms / result.chosen.predicted_ms
    step(f"refining: the pick measures {measured_ms:.2f} ms, re-scaling the table × {scale:.3f}")
    try:
        again = choose(scale=scale, margin=margin, margin_source="refine")
    except UnreachableTarget:
        return None
    if again.status == "dense" or again.chosen.key == result.chosen.key:
        return None
    return again
