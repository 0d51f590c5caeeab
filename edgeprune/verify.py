"""``edgeprune budget --verify``: is the budget met when the chosen schedule is measured?

The chosen schedule and its dense backbone are exported (the real static graphs,
parity-checked) for the runtime the latency table was measured with, loaded in that
runtime's runner on this machine, and timed interleaved in one process (steady-state
bursts, as ``validate-profile`` times). The budget is met only when the measured median
of the pruned model is within the target; the prediction error and the machine's
drift since profiling (dense measured now vs dense predicted) are reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeprune.budget import BudgetResult
from edgeprune.errors import EdgepruneError
from edgeprune.latency import LatencyModel
from edgeprune.records import record


@dataclass(frozen=True)
class Verification:
    target_ms: float
    predicted_ms: float
    measured_ms: float
    measured_p90_ms: float
    dense_predicted_ms: float
    dense_measured_ms: float
    runtime: str
    threads: int
    rounds: int
    burst: int

    @property
    def met(self) -> bool:
        return self.measured_ms <= self.target_ms

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

    def to_dict(self) -> dict:
        return record(
            self,
            "met target_ms predicted_ms measured_ms measured_p90_ms rel_error=error vs_target "
            "dense_predicted_ms dense_measured_ms drift speedup runtime threads rounds burst",
        )


def verify_budget(
    result: BudgetResult,
    model: LatencyModel,
    rounds: int = 30,
    burst: int = 3,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Export the chosen schedule and dense, time them interleaved here, compare."""
    from edgeprune.runtimes.base import get_runner
    from edgeprune.source import resolve
    from edgeprune.validate import check_local_runtime, time_sources

    if rounds < 3:
        raise EdgepruneError(f"--rounds {rounds} must be at least 3")
    runtime = check_local_runtime(model, "budget --verify")
    tb = model.table
    threads = threads or int(tb.device.get("threads") or 1)
    arch = result.arch.name
    chosen = result.chosen
    pruned = (
        resolve(arch)
        if result.status == "dense"
        else resolve(f"{arch}:{result.method}", keep=chosen.keep_ratios, locs=result.locs)
    )
    dense = resolve(arch)
    labels = [f"the chosen schedule {list(chosen.keep_ratios)}", "the dense model"]
    t_pruned, t_dense = time_sources(
        [pruned, dense], runtime, threads, tb.batch, rounds, burst, progress, labels
    )
    return Verification(
        target_ms=result.target_ms,
        predicted_ms=chosen.predicted_ms,
        measured_ms=t_pruned.median_ms,
        measured_p90_ms=t_pruned.p90_ms,
        dense_predicted_ms=result.dense_ms,
        dense_measured_ms=t_dense.median_ms,
        runtime=f"{runtime} {get_runner(runtime, threads=threads).version()}",
        threads=threads,
        rounds=rounds,
        burst=burst,
    )
