"""The budget file (``edgeprune budget``): what a search chose, with the latency table
it was made on, so that the file alone drives ``--budget`` and the training loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from edgeprune.budget.search import BudgetResult
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.schema import Strict, load_json, validate
from edgeprune.core.source import Source, resolve
from edgeprune.export.manifest import now_utc, sha256_file
from edgeprune.latency.model import LatencyModel
from edgeprune.latency.table import MAX_MS, from_dict, load

BUDGET_SCHEMA = "edgeprune.budget"
BUDGET_VERSION = 1


def budget_dict(result: BudgetResult, model: LatencyModel, profile_path: str | Path) -> dict:
    """The budget file's content; refused (one line) if any number in it is NaN or ±inf,
    so that no file with a non-number is ever written."""
    d = _budget_dict(result, model, profile_path)
    if (where := _non_finite(d)) is not None:
        raise EdgepruneError(
            f"the budget's {where} is not a finite number; no budget file written",
            "check the latency table and the sensitivity file it was made from",
        )
    return d


def _non_finite(obj, where: str = "value") -> str | None:
    """Where the first NaN/±inf float in ``obj`` (nested dicts and lists) is, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where
    if isinstance(obj, dict):
        items = [(f"{where}.{k}" if where != "value" else str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list | tuple):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(obj)]
    else:
        return None
    return next((bad for w, v in items if (bad := _non_finite(v, w)) is not None), None)


def _budget_dict(result: BudgetResult, model: LatencyModel, profile_path: str | Path) -> dict:
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
        # ToMe: the tokens merged per block (what export/predict --budget build); null
        # for a method with keep ratios
        "r_schedule": list(c.r_schedule) if c.r_schedule is not None else None,
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
    # ToMe: the tokens merged per block (locs and keep_ratios are what that keeps)
    r_schedule: tuple[int, ...] | None = None

    @property
    def table_target_ms(self) -> float:
        """The target in the table's own terms (what its predictions must meet)."""
        return self.target_ms / self.reanchor_scale

    @property
    def aim_ms(self) -> float:
        """What the search aimed at: the target less its margin (the target itself in a
        file that records no aim)."""
        return float(self.data.get("aim_ms") or self.target_ms)

    @property
    def table_aim_ms(self) -> float:
        """The aim in the table's own terms: what training pushes the latency to."""
        return self.aim_ms / self.reanchor_scale

    def latency_model(self) -> LatencyModel:
        path = (self.data.get("profile") or {}).get("path")
        if self.data.get("profile_table") is not None:
            table = from_dict(self.data["profile_table"], "budget's profile_table")
            return LatencyModel(table, f"{path or 'the table'} (as copied in the budget)")
        if not path:
            raise EdgepruneError("the budget names no profile", "re-run 'edgeprune budget'")
        return LatencyModel(load(path), path)


Ms = Annotated[float, Field(ge=0, le=MAX_MS, allow_inf_nan=False)]


class BudgetProfileFile(Strict):
    path: str | None = None
    sha256: str | None = None


class BudgetFile(Strict):
    """A budget file: the fields edgeprune reads back (the others are a record).
    ``schema`` and ``version`` are checked before; ``profile_table`` when it is used
    (``latency.table.from_dict``)."""

    method: Annotated[str, Field(min_length=1, max_length=200)]
    arch: Annotated[str, Field(min_length=1, max_length=200)]
    locs: Annotated[list[Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=10_000)]
    keep_ratios: list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]]
    target_ms: Annotated[float, Field(gt=0, le=MAX_MS, allow_inf_nan=False)]
    predicted_ms: Ms
    reanchor_scale: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0
    r_schedule: (
        Annotated[list[Annotated[int, Field(ge=0, le=100_000)]], Field(max_length=10_000)] | None
    ) = None
    profile: BudgetProfileFile | None = None
    profile_table: dict | None = None

    @model_validator(mode="after")
    def _same_length(self) -> BudgetFile:
        if len(self.locs) != len(self.keep_ratios):
            raise PydanticCustomError("budget_shape", "locs and keep_ratios differ in length")
        if (self.r_schedule is not None) != (self.method == "tome"):
            raise PydanticCustomError(
                "budget_shape", "r_schedule is given for ToMe budgets, and only for them"
            )
        return self


def load_budget(path: str | Path) -> Budget:
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(
            f"budget file {path} does not exist", "write one with 'edgeprune budget'"
        )
    what, hint = f"budget file {path} is not valid", "re-run 'edgeprune budget'"
    d = load_json(path, what, hint)
    if not isinstance(d, dict) or d.get("schema") != BUDGET_SCHEMA:
        raise EdgepruneError(f"{what}: 'schema' is not '{BUDGET_SCHEMA}'", hint)
    if d.get("version") != BUDGET_VERSION:
        raise EdgepruneError(
            f"{what}: version {d.get('version')!r}, this edgeprune reads {BUDGET_VERSION}", hint
        )
    f = validate(BudgetFile, d, what, hint)
    return Budget(
        method=f.method,
        arch=f.arch,
        locs=tuple(f.locs),
        keep_ratios=tuple(f.keep_ratios),
        target_ms=f.target_ms,
        predicted_ms=f.predicted_ms,
        data=d,
        reanchor_scale=f.reanchor_scale,
        r_schedule=tuple(f.r_schedule) if f.r_schedule is not None else None,
    )


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
    """SRC at the budget's method, keep ratios and locations, or ToMe's r schedule
    (refusing --keep/--locs, --tome-r with a ToMe budget, a contradicting --method, and a
    budget made for another arch)."""
    b = load_budget(budget_path)
    if keep is not None or locs is not None:
        raise EdgepruneError("--budget sets the keep ratios and locations", "drop --keep/--locs")
    if method is not None and method != b.method:
        raise EdgepruneError(f"--method {method} contradicts the budget's method {b.method}")
    pruned = bool(b.locs) and b.r_schedule is None
    opts = dict(method_options or {})
    if b.r_schedule is not None:
        if "r" in opts:
            raise EdgepruneError("--budget sets ToMe's r schedule", "drop --tome-r")
        opts["r"] = b.r_schedule
    source = resolve(
        src,
        method=b.method,
        keep=b.keep_ratios if pruned else None,
        locs=b.locs if pruned else None,
        heads=heads,
        method_options=opts or None,
    )
    if source.arch.name != b.arch:
        raise EdgepruneError(
            f"budget {budget_path} is for {b.arch}, but {src} is {source.arch.name}",
            f"use a {b.arch} model or a budget made for {source.arch.name}",
        )
    return source
