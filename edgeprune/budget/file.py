"""The budget file (``edgeprune budget``): what a search chose, with the latency table
it was made on, so that the file alone drives ``--budget`` and the training loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edgeprune.budget.search import BudgetResult
from edgeprune.core.atomic import read_json_file
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.source import Source, resolve
from edgeprune.export.manifest import now_utc, sha256_file
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import from_dict, load

BUDGET_SCHEMA = "edgeprune.budget"
BUDGET_VERSION = 1


def budget_dict(result: BudgetResult, model: LatencyModel, profile_path: str | Path) -> dict:
    c = result.chosen
    p = Path(profile_path)
    return {
        "schema": BUDGET_SCHEMA,
        "version": BUDGET_VERSION,
        "created": now_utc(),
        "method": c.plan.method,
        "arch": result.arch.name,
        "locs": list(c.plan.prune_locs),
        "keep_ratios": list(c.keep_ratios),
        "schedule": result.schedule,
        "objective": result.objective,
        "status": result.status,
        "target_ms": result.target_ms,
        # re-anchored (budget --verify): the table's prediction × reanchor_scale
        "predicted_ms": result.predicted_ms,
        "table_predicted_ms": c.predicted_ms,
        "reanchor_scale": result.scale,
        "margin_ms": result.margin_ms,
        "margin": result.margin,
        "margin_source": result.margin_source,
        "aim_ms": result.aim_ms,
        "dense_ms": result.dense_ms,  # the table's prediction
        "gflops": result.gflops(),
        "tokens_per_block": list(c.plan.attn_tokens),
        "mlp_tokens_per_block": list(c.plan.mlp_tokens),
        "predicted_accuracy": c.accuracy,
        # stages below the sensitivity file's measured keep ratios (budget --extrapolate)
        "extrapolated": list(result.extrapolated),
        "profile": {
            "path": str(p.resolve()) if p.exists() else str(p),
            "sha256": sha256_file(p) if p.exists() else None,
            "device": model.table.device.get("name"),
            "measured": model.table.measured,
            "date": model.table.date,
            "batch": model.table.batch,
            "validation": model.table.validation,  # edgeprune validate's verdict, if any
        },
        # the table itself, so the budget file alone drives the loss
        "profile_table": model.table.to_dict(),
    }


@dataclass(frozen=True, kw_only=True)
class Budget:
    """A budget file, read: the schedule chosen, the target, and the file's data."""

    method: str
    arch: str
    locs: tuple[int, ...]
    keep_ratios: tuple[float, ...]
    target_ms: float
    predicted_ms: float
    data: dict
    # the table's predictions × this met the target (budget --verify re-anchored it)
    reanchor_scale: float = 1.0

    @property
    def table_target_ms(self) -> float:
        """The target in the table's own terms (what its predictions must meet)."""
        return self.target_ms / self.reanchor_scale

    def latency_model(self) -> LatencyModel:
        path = (self.data.get("profile") or {}).get("path")
        if isinstance(self.data.get("profile_table"), dict):
            table = from_dict(self.data["profile_table"], "budget's profile_table")
            return LatencyModel(table, f"{path or 'the table'} (as copied in the budget)")
        if not path:
            raise EdgepruneError("the budget names no profile", "re-run 'edgeprune budget'")
        return LatencyModel(load(path), path)


def load_budget(path: str | Path) -> Budget:
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(
            f"budget file {path} does not exist", "write one with 'edgeprune budget'"
        )

    def bad(what: str) -> EdgepruneError:
        return EdgepruneError(
            f"budget file {path} is not valid: {what}", "re-run 'edgeprune budget'"
        )

    d = read_json_file(path, bad, BUDGET_SCHEMA)
    if d.get("version") != BUDGET_VERSION:
        raise bad(f"version {d.get('version')!r}, this edgeprune reads {BUDGET_VERSION}")
    try:
        b = Budget(
            method=str(d["method"]),
            arch=str(d["arch"]),
            locs=tuple(int(x) for x in d["locs"]),
            keep_ratios=tuple(float(x) for x in d["keep_ratios"]),
            target_ms=float(d["target_ms"]),
            predicted_ms=float(d["predicted_ms"]),
            data=d,
            reanchor_scale=float(d.get("reanchor_scale", 1.0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"{e.__class__.__name__}: {e}") from None
    if len(b.locs) != len(b.keep_ratios):
        raise bad("locs and keep_ratios differ in length")
    if not (math.isfinite(b.reanchor_scale) and b.reanchor_scale > 0):
        raise bad(f"reanchor_scale {b.reanchor_scale} is not a positive finite number")
    return b


def resolve_with_budget(
    src: str,
    budget_path: str | Path,
    method: str | None = None,
    keep=None,
    locs=None,
    *,
    heads: int | None = None,
    method_options: dict[str, object] | None = None,
) -> Source:
    """SRC at the budget's method, keep ratios and locations (refusing --keep/--locs,
    a contradicting --method, and a budget made for another arch)."""
    b = load_budget(budget_path)
    if keep is not None or locs is not None:
        raise EdgepruneError("--budget sets the keep ratios and locations", "drop --keep/--locs")
    if method is not None and method != b.method:
        raise EdgepruneError(f"--method {method} contradicts the budget's method {b.method}")
    pruned = bool(b.locs)
    source = resolve(
        src,
        method=b.method,
        keep=b.keep_ratios if pruned else None,
        locs=b.locs if pruned else None,
        heads=heads,
        method_options=method_options,
    )
    if source.arch.name != b.arch:
        raise EdgepruneError(
            f"budget {budget_path} is for {b.arch}, but {src} is {source.arch.name}",
            f"use a {b.arch} model or a budget made for {source.arch.name}",
        )
    return source
