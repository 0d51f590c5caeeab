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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeprune.budget.search import BudgetResult, UnreachableTarget
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.plan import dense_plan
from edgeprune.core.records import record
from edgeprune.core.source import resolve
from edgeprune.latency.model import LatencyModel
from edgeprune.profiling.validate import LocalModels, check_local_runtime
from edgeprune.runtimes.base import get_runner
from edgeprune.runtimes.timing import Timing

ANCHOR_ROUNDS = 20  # bursts of the dense model timed to re-anchor the table
# a re-anchored pick measured over the target, or more than REFINE_BAND under it, is
# chosen once more with the scale its own measurement gives, aiming REFINE_MARGIN under
# the target (what is left to cover then is one measurement's noise, not the table's)
REFINE_BAND = 0.05
REFINE_MARGIN = 0.02
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


def needs_refining(pick_ms: float, target_ms: float) -> bool:
    """Whether a re-anchored pick (its ``refine_basis`` figure) is over the target or
    more than REFINE_BAND under it."""
    return not -REFINE_BAND <= pick_ms / target_ms - 1 <= 0


def choice(result: BudgetResult | None) -> dict | None:
    """What a search chose, for the record: status, keep ratios, the table's prediction
    and the re-anchored one (× the result's scale). None: the target was unreachable."""
    if result is None:
        return None
    return {
        "status": result.status,
        "keep_ratios": list(result.chosen.keep_ratios),
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
) -> tuple[BudgetResult, Verification]:
    """Export dense; with ``reanchor``, time it and choose again with
    ``choose(scale=…)`` (the budget search, ``budget.search`` with its target, margin,
    method… bound); export the chosen schedule, time it and dense interleaved here,
    compare. ``table_result``: what the table alone chose (None: unreachable on it,
    allowed only with ``reanchor``). Returns the verified result and the verification."""

    if rounds < 3:
        raise EdgepruneError(f"--rounds {rounds} must be at least 3")
    runtime = check_local_runtime(model, "budget --verify")
    tb = model.table
    threads = threads or int(tb.device.get("threads") or 1)
    step = progress or (lambda _m: None)
    kernels = bool(tb.device.get("custom_kernels"))
    with LocalModels(runtime, threads, tb.batch, progress, kernels) as here:
        dense = here.load(resolve(model.arch.name), "the dense model")
        check = _Check(here=here, dense=dense, rounds=rounds, burst=burst, step=step)
        anchor, result = None, table_result
        if reanchor:
            anchor, result = check.reanchor(model, choose, table_result)
        if result is None:
            raise ValueError("verify_budget needs the table's own choice without reanchor")
        measured = check.measure(choose, result, anchor, refine=reanchor)
    return measured.result, Verification(
        target_ms=measured.result.target_ms,
        predicted_ms=measured.result.predicted_ms,
        table_predicted_ms=measured.result.chosen.predicted_ms,
        measured_ms=measured.pick.median_ms,
        measured_p90_ms=measured.pick.p90_ms,
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
class _Check:
    """The models of one verification, loaded here: dense, and the picks timed beside it."""

    here: LocalModels
    dense: object  # the dense model's loaded runner
    rounds: int
    burst: int
    step: Callable[[str], None]

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
        keep = list(result.chosen.keep_ratios)
        pruned = self.here.load(_source(result), f"the {what} schedule {keep}")
        t_pruned, t_dense = self.here.time([pruned, self.dense], self.rounds, self.burst)
        return t_pruned, t_dense

    def measure(
        self, choose, result: BudgetResult, anchor: Anchor | None, *, refine: bool
    ) -> _Measured:
        """Time the pick; with ``refine``, when it lands outside the band, choose once
        more on its own measurement and time that one instead."""
        t_pruned, t_dense = self.time_pick(result, "chosen")
        first_ms = refine_basis(t_pruned.median_ms, t_dense.median_ms, anchor)
        if not (refine and needs_refining(first_ms, result.target_ms)):
            return _Measured(result=result, pick=t_pruned, dense=t_dense)
        again = _refine(choose, result, first_ms, self.step)
        if again is None:
            return _Measured(result=result, pick=t_pruned, dense=t_dense)
        first = {
            **choice(result), "scale": result.scale,
            "measured_ms": t_pruned.median_ms, "dense_measured_ms": t_dense.median_ms,
            "at_anchor_ms": at_anchor_speed(t_pruned.median_ms, t_dense.median_ms, anchor),
            "basis_ms": first_ms,
        }  # fmt: skip
        t_pruned, t_dense = self.time_pick(again, "refined")
        refined = {"first": first, "scale": again.scale, "margin": REFINE_MARGIN}
        return _Measured(result=again, pick=t_pruned, dense=t_dense, refined=refined)


def _source(result: BudgetResult):
    """The model a search result chose: dense, or its method at the chosen schedule."""

    arch = result.arch.name
    if result.status == "dense":
        return resolve(arch)
    return resolve(f"{arch}:{result.method}", keep=result.chosen.keep_ratios, locs=result.locs)


def _refine(choose, result: BudgetResult, measured_ms: float, step) -> BudgetResult | None:
    """Choose again with the scale the chosen schedule's own measurement gives
    (``refine_basis`` / its table prediction), REFINE_MARGIN under the target. None:
    nothing new to try (the same schedule, dense, or no schedule meets the target at
    that scale)."""

    scale = measured_ms / result.chosen.predicted_ms
    step(f"refining: the pick measures {measured_ms:.2f} ms, re-scaling the table × {scale:.3f}")
    try:
        again = choose(scale=scale, margin=REFINE_MARGIN, margin_source="refine")
    except UnreachableTarget:
        return None
    if again.status == "dense" or again.chosen.keep_ratios == result.chosen.keep_ratios:
        return None
    return again
