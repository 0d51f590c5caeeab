"""The latency model: a device profile (LatencyTable) + a TokenPlan -> predicted ms.

    pieces    = embed + head + Σ_blocks block(tokens) + Σ_selectors selector(tokens_in)
    predicted = offset + scale · pieces

``offset`` and ``scale`` are the end-to-end correction the profile fitted on whole
models timed in the same sweep (``tables.e2e``; 0 and 1 for a profile without it): the
pieces, timed alone, miss what only a whole model has (the ops between blocks, the
cache state of a deep graph, the session's per-run overhead).

A block whose attention and MLP see the same token count costs ``block(n)``; a block
split by a mid-block selector (EViT-style) costs ``attn(n_attn) + mlp(n_mlp)``.
Every curve is read by ``latency_table.piecewise_linear`` (linear extrapolation past
the ends, clamped at zero), the one interpolation, which ``Curve.at`` uses too.

There is ONE implementation, in torch (float64): ``LatencyModel.predict_tokens`` takes
token counts as float tensors (any leading batch shape) and returns a latency tensor
with gradients. ``predict`` (the CLI), the budget search and the training loss all
call it, so they cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.records import record
from edgeprune.latency.table import Anchor, Curve, EndToEnd, LatencyTable, load, piecewise_linear

if TYPE_CHECKING:
    import torch

    from edgeprune.core.plan import TokenPlan


def interp(curve: Curve, n: torch.Tensor) -> torch.Tensor:
    """``curve`` at token counts ``n`` (a float tensor): differentiable in ``n``."""
    return piecewise_linear(curve.tokens, curve.median_ms, n).clamp(min=0.0)


@dataclass(frozen=True)
class Prediction:
    """One plan's predicted latency and where it goes."""

    total_ms: float
    embed_ms: float
    head_ms: float
    blocks_ms: tuple[float, ...]
    selectors_ms: tuple[float, ...]
    attn_tokens: tuple[int, ...]
    mlp_tokens: tuple[int, ...]
    selector_tokens_in: tuple[int, ...]
    overhead_ms: float = 0.0  # the end-to-end offset; the parts above are already scaled
    scale: float = 1.0  # the end-to-end scale applied to every part

    def to_dict(self) -> dict:
        return record(
            self,
            "predicted_ms=total_ms overhead_ms e2e_scale=scale embed_ms head_ms blocks_ms "
            "selectors_ms tokens_per_block=attn_tokens mlp_tokens_per_block=mlp_tokens "
            "selector_tokens_in",
        )


class LatencyModel:
    """Predicts end-to-end latency from a LatencyTable."""

    def __init__(self, table: LatencyTable, source: str = "<table>", corrected: bool = True):
        self.table = table
        self.source = source
        e2e = table.e2e if corrected else None
        self.offset_ms = e2e.offset_ms if e2e is not None else 0.0
        self.scale = e2e.scale if e2e is not None else 1.0

    def uncorrected(self) -> LatencyModel:
        """The same table without the end-to-end correction: the plain sum of pieces."""
        return LatencyModel(self.table, self.source, corrected=False)

    @property
    def arch(self):
        return self.table.arch

    # ---- checks --------------------------------------------------------------------
    def check_arch(self, arch) -> None:
        if arch.to_dict() != self.table.arch.to_dict():
            raise EdgepruneError(
                f"profile {self.source} is for {self.table.arch.name}, "
                f"but the model is {arch.name}",
                f"use a profile measured for {arch.name}",
            )

    def check_batch(self, batch: int) -> None:
        if batch != self.table.batch:
            raise EdgepruneError(
                f"profile {self.source} was measured at batch {self.table.batch}, "
                f"but batch {batch} was asked for",
                f"pass --batch {self.table.batch} or re-profile at batch {batch}",
            )

    def selector_curve(self, method: str, n_selectors: int) -> Curve | None:
        if n_selectors == 0:
            return None
        if self.table.method is not None and self.table.method != method:
            raise EdgepruneError(
                f"profile {self.source} was measured for method {self.table.method}, "
                f"but the model is {method}",
                f"use a profile measured with --method {method}",
            )
        curve = self.table.selectors.get(method)
        if curve is None:
            have = ", ".join(self.table.selectors) or "none"
            raise EdgepruneError(
                f"profile {self.source} has no selector timings for method {method} "
                f"(it has: {have})",
                f"re-profile with --method {method}",
            )
        return curve

    def check_plan(self, plan: TokenPlan) -> None:
        self.check_arch(plan.arch)
        self.selector_curve(plan.method, len(plan.selectors))

    # ---- the one implementation ------------------------------------------------------
    def components(
        self,
        attn: torch.Tensor,
        mlp: torch.Tensor,
        selector_in: torch.Tensor,
        method: str | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block (``[..., depth]``) and per-selector (``[..., S]``) latencies, ms."""

        tb = self.table
        same = attn == mlp
        blocks = interp(tb.block, attn)
        if not bool(same.all()):
            if tb.attn is None or tb.mlp is None:
                raise EdgepruneError(
                    f"profile {self.source} has no separate attention/MLP timings, which "
                    "a plan with mid-block selectors needs",
                    "re-profile with a profiler that measures the attn and mlp halves",
                )
            split = interp(tb.attn, attn) + interp(tb.mlp, mlp)
            blocks = torch.where(same, blocks, split)
        n_sel = selector_in.shape[-1]
        curve = self.selector_curve(method or "", n_sel) if n_sel else None
        sels = interp(curve, selector_in) if curve is not None else selector_in * 0.0
        return blocks, sels

    def predict_tokens(
        self,
        attn: torch.Tensor,
        mlp: torch.Tensor | None = None,
        selector_in: torch.Tensor | None = None,
        method: str | None = None,
    ) -> torch.Tensor:
        """Predicted ms from token counts (float tensors, ``[..., depth]`` and
        ``[..., S]``); differentiable. ``mlp`` defaults to ``attn``."""

        mlp = attn if mlp is None else mlp
        if selector_in is None:
            selector_in = attn.new_zeros(attn.shape[:-1] + (0,))
        if attn.shape[-1] != self.table.arch.depth or mlp.shape[-1] != self.table.arch.depth:
            raise ValueError(f"token counts need {self.table.arch.depth} blocks on the last axis")
        blocks, sels = self.components(attn, mlp, selector_in, method)
        fixed = torch.tensor(
            self.table.embed.median_ms + self.table.head.median_ms,
            dtype=attn.dtype,
            device=attn.device,
        )
        return self.offset_ms + self.scale * (fixed + blocks.sum(-1) + sels.sum(-1))

    # ---- plans -------------------------------------------------------------------------
    @staticmethod
    def plan_tensors(plans: list[TokenPlan]) -> tuple[torch.Tensor, ...]:
        attn = torch.tensor([p.attn_tokens for p in plans], dtype=torch.float64)
        mlp = torch.tensor([p.mlp_tokens for p in plans], dtype=torch.float64)
        n_sel = {len(p.selectors) for p in plans}
        if len(n_sel) != 1:
            raise ValueError("plans with different numbers of selectors")
        sel = torch.tensor(
            [[s.tokens_in for s in p.selectors] for p in plans], dtype=torch.float64
        ).reshape(len(plans), n_sel.pop())
        return attn, mlp, sel

    def predict_many(self, plans: list[TokenPlan]) -> torch.Tensor:
        """Predicted ms of many plans of one method at once (float64 tensor [K]); plans
        with different numbers of selectors (ToMe's r schedules: a merge in every block
        whose r is not 0) are predicted a group per number, in one call each."""
        if not plans:
            return torch.zeros(0, dtype=torch.float64)
        self.check_plan(plans[0])
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(plans):
            groups.setdefault(len(p.selectors), []).append(i)
        out = torch.zeros(len(plans), dtype=torch.float64)
        for idx in groups.values():
            attn, mlp, sel = self.plan_tensors([plans[i] for i in idx])
            out[idx] = self.predict_tokens(attn, mlp, sel, plans[0].method)
        return out

    def predict(self, plan: TokenPlan) -> Prediction:
        self.check_plan(plan)
        attn, mlp, sel = self.plan_tensors([plan])
        blocks, sels = self.components(attn[0], mlp[0], sel[0], plan.method)
        total = float(self.predict_tokens(attn, mlp, sel, plan.method)[0])
        k = self.scale
        return Prediction(
            total_ms=total,
            embed_ms=k * self.table.embed.median_ms,
            head_ms=k * self.table.head.median_ms,
            blocks_ms=tuple(k * float(x) for x in blocks),
            selectors_ms=tuple(k * float(x) for x in sels),
            attn_tokens=tuple(plan.attn_tokens),
            mlp_tokens=tuple(plan.mlp_tokens),
            selector_tokens_in=tuple(s.tokens_in for s in plan.selectors),
            overhead_ms=self.offset_ms,
            scale=k,
        )


def fit_correction(raw_ms: list[float], measured_ms: list[float]) -> tuple[float, float]:
    """(offset, scale) with measured ≈ offset + scale * raw, least squares.

    Two or more anchors that span at least 20 % of the range fit both terms; otherwise
    (or when the affine fit comes out implausible: scale outside 0.5–2, or an offset
    larger than half the smallest anchor) only a scale is fitted through zero."""

    if not raw_ms or len(raw_ms) != len(measured_ms) or min(raw_ms) <= 0:
        raise ValueError("anchors need positive predicted latencies")
    x, y = np.asarray(raw_ms, float), np.asarray(measured_ms, float)
    if len(x) >= 2 and (x.max() - x.min()) >= 0.2 * x.max():
        b, a = np.polyfit(x, y, 1)
        if 0.5 <= b <= 2.0 and abs(a) <= 0.5 * y.min():
            return float(a), float(b)
    return 0.0, float((x * y).sum() / (x * x).sum())


def fit_end_to_end(
    table: LatencyTable, measured: list[tuple[str, TokenPlan, float, float]]
) -> EndToEnd:
    """The end-to-end correction of ``table`` from whole models timed in its sweep:
    ``measured`` holds (label, plan, median ms, p90 ms) per anchor. Records the fit
    per anchor in ``table.extra["e2e_fit"]``."""
    raw_model = LatencyModel(table, corrected=False)
    rows = [
        Anchor(
            label,
            tuple(p.attn_tokens),
            tuple(p.mlp_tokens),
            tuple(s.tokens_in for s in p.selectors),
            median,
            p90,
        )
        for label, p, median, p90 in measured
    ]
    raw = [float(raw_model.predict_many([p])[0]) for _, p, _, _ in measured]
    offset, scale = fit_correction(raw, [r.median_ms for r in rows])
    table.extra["e2e_fit"] = [
        {
            "label": r.label,
            "pieces_ms": x,
            "measured_ms": r.median_ms,
            "corrected_ms": offset + scale * x,
        }
        for r, x in zip(rows, raw, strict=True)
    ]
    return EndToEnd(tuple(rows), offset, scale)


def load_model(path) -> LatencyModel:
    """A LatencyModel from a profile file (validated by ``latency_table.load``)."""

    return LatencyModel(load(path), str(path))


@dataclass(frozen=True, kw_only=True)
class Expected:
    """The one latency quoted for a schedule on a device: ``ms`` ± ``plus_minus_ms``, and
    what it was made from (``basis``; ``parts``: the table's prediction, the rescale
    applied to it, a measurement). Every command that states a latency states this."""

    device: str
    ms: float
    plus_minus_ms: float | None  # None: nothing says how far off it may be
    basis: str  # "latency table", "latency table, rescaled", "measured"
    parts: dict

    def line(self) -> str:
        pm = "± unknown" if self.plus_minus_ms is None else f"±{self.plus_minus_ms:.2f}"
        return f"expected latency on {self.device}: {self.ms:.2f} ms ({pm}, {self.basis})"

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "ms": self.ms,
            "plus_minus_ms": self.plus_minus_ms,
            "basis": self.basis,
            "parts": self.parts,
        }


def table_error(table: LatencyTable) -> tuple[float | None, str]:
    """The relative error of a table's predictions, and where it comes from: the error
    ``validate`` measured on whole models when it has run (``extra["validation"]``), else
    the table's own measured error (``measured_error``); None when it records neither."""
    validation = table.extra.get("validation") or {}
    if isinstance(validation.get("median_error"), int | float):
        return abs(float(validation["median_error"])), "validated on whole models"
    err, parts = measured_error(table)
    if not parts:
        return None, "the table records no measured error"
    return err, "the table's measured error"


def expected_from_table(model: LatencyModel, table_ms: float, rescale: float = 1.0) -> Expected:
    """The latency expected from the table's prediction ``table_ms``, × ``rescale`` (a
    budget's re-anchoring to a machine's speed), ± the table's error."""
    err, why = table_error(model.table)
    ms = table_ms * rescale
    return Expected(
        device=str(model.table.device.get("name")),
        ms=ms,
        plus_minus_ms=None if err is None else ms * err,
        basis="latency table" if rescale == 1.0 else "latency table, rescaled",
        parts={"table_ms": table_ms, "rescale": rescale, "error": err, "error_from": why},
    )


def expected_from_measurement(
    device: str, measured_ms: float, plus_minus_ms: float | None, *, table_ms: float | None = None
) -> Expected:
    """The latency measured (the median, ± its interval), with the table's prediction."""
    return Expected(
        device=device,
        ms=measured_ms,
        plus_minus_ms=plus_minus_ms,
        basis="measured",
        parts={"measured_ms": measured_ms, "table_ms": table_ms},
    )


def predict_source(
    profile, source, batch: int = 1, *, rescale: float = 1.0
) -> tuple[LatencyModel, Prediction, dict]:
    """``edgeprune predict``: the latency table at ``profile``, the prediction for the
    resolved ``source`` at ``batch`` (× ``rescale``: a budget's stored re-anchoring), and
    the facts reported about it, with the one expected latency (``info["expected"]``)."""
    model = load_model(profile)
    model.check_batch(batch)
    pred = model.predict(source.plan)
    info = {
        "source": source.text,
        "method": source.method.name,
        "arch": source.arch.name,
        "keep_ratios": list(source.config.keep_ratios),
        "prune_locs": list(source.config.prune_locs),
        **_r_schedule(source),
        "profile": str(profile),
        "device": model.table.device.get("name"),
        "measured": model.table.measured,
        "batch": model.table.batch,
        **pred.to_dict(),
        "gflops": source.flops().total,
        "expected": expected_from_table(model, pred.total_ms, rescale).to_dict(),
    }
    return model, pred, info


def _r_schedule(source) -> dict:
    """ToMe: ``{"r_schedule": tokens merged per block}``; {} for other methods."""
    if source.method.name != "tome":
        return {}
    plan = source.plan
    return {"r_schedule": [a - m for a, m in zip(plan.attn_tokens, plan.mlp_tokens, strict=True)]}


def measured_error(table) -> tuple[float, dict]:
    """The table's own measured error, as a fraction, and its parts: the end-to-end fit's
    residual on the whole models timed in the sweep (root mean square), the median
    interpolation error at the off-grid check points, and the median spread of a point's
    repeated passes (the noise). The error is the largest of those the table records."""
    parts: dict[str, float] = {}
    fit = table.extra.get("e2e_fit") or []
    if fit:
        res = [r["corrected_ms"] / r["measured_ms"] - 1 for r in fit if r["measured_ms"] > 0]
        parts["e2e_residual"] = math.sqrt(sum(r * r for r in res) / len(res)) if res else 0.0
    chk = (table.extra.get("interp_check") or {}).get("points") or []
    if chk:
        errs = sorted(p["rel_err"] for p in chk)
        parts["interpolation"] = errs[len(errs) // 2]
    noise = table.extra.get("noise")
    if noise:
        parts["noise"] = float(noise["median_spread"])
    return (max(parts.values()) if parts else 0.0), parts
