"""The latency-aware sparsity loss: SPViT's computation-aware loss, driven by a
measured device profile instead of FLOPs.

DynamicViT/SPViT training produces, per pruning stage, a keep mask over the patch
tokens (soft, or Gumbel-hard with a straight-through gradient), B×N. This loss turns
the masks into expected token counts (mean over the batch of the mask's sum, plus the
tokens the mask does not cover, such as CLS), places them in the method's TokenPlan
layout (which blocks each stage feeds, pre- or mid-block), predicts the latency with
the same differentiable model that ``edgeprune predict`` and ``edgeprune budget`` use,
and penalises exceeding the target.

    crit = LatencyAwareSparsityLoss("budget.json")            # aim, method, locs from it
    crit = LatencyAwareSparsityLoss("cpu.json", target_ms=8.0, method="dynamicvit")
    loss = ce + crit(masks)                                    # masks: list of B×N tensors
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from edgeprune.budget.file import BUDGET_SCHEMA, Budget, load_budget
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.core.methods.base import geometric
from edgeprune.core.schema import load_json
from edgeprune.latency.model import LatencyModel, load_model
from edgeprune.latency.table import LatencyTable

SHAPES = ("hinge", "squared", "squared_hinge")


def _open(obj, method, locs, target_ms):
    """(LatencyModel, method, locs, target) from a profile / budget (object or path)."""

    if isinstance(obj, str | Path):
        p = Path(obj)
        data = load_json(p, f"{p} is neither a latency table nor a budget")
        is_budget = isinstance(data, dict) and data.get("schema") == BUDGET_SCHEMA
        obj = load_budget(p) if is_budget else load_model(p)
    if isinstance(obj, Budget):
        model = obj.latency_model()
        if method is not None and method != obj.method:
            raise EdgepruneError(f"method {method} contradicts the budget's {obj.method}")
        return (
            model,
            obj.method,
            tuple(locs) if locs is not None else obj.locs,
            obj.table_aim_ms if target_ms is None else target_ms,
        )
    if isinstance(obj, LatencyTable):
        obj = LatencyModel(obj)
    if not isinstance(obj, LatencyModel):
        raise TypeError(f"expected a profile, budget, LatencyModel or path, got {type(obj)}")
    return obj, method or obj.table.method, locs, target_ms


class LatencyAwareSparsityLoss(nn.Module):
    """``weight · shape((predicted_ms − target_ms) / target_ms)``.

    shape: ``hinge`` (relu: only exceeding the target costs), ``squared`` (two-sided,
    like DynamicViT's ratio MSE, converges onto the target), ``squared_hinge``.
    extra_tokens: tokens per stage that the masks do not cover (default: the model's
    token count minus the mask width, i.e. CLS for DynamicViT's B×196 masks; give it
    for methods that append tokens, such as a fused/package token).
    """

    def __init__(
        self,
        profile_or_budget,
        target_ms: float | None = None,
        method: str | None = None,
        locs: Sequence[int] | None = None,
        *,
        weight: float = 1.0,
        shape: str = "hinge",
        extra_tokens: int | Sequence[int] | None = None,
    ):
        super().__init__()
        model, method, locs, target_ms = _open(profile_or_budget, method, locs, target_ms)
        if target_ms is None or not (math.isfinite(target_ms) and target_ms > 0):
            raise EdgepruneError(f"target_ms {target_ms} is not a positive finite number")
        if shape not in SHAPES:
            raise EdgepruneError(f"unknown loss shape '{shape}'", f"expected: {', '.join(SHAPES)}")
        if method is None:
            raise EdgepruneError("the profile names no method", "pass method=...")
        meth = get_method(method)
        arch = model.arch
        locs = tuple(locs) if locs is not None else tuple(meth.default_locs)
        # the plan gives the layout only (which blocks each stage feeds); its ratios must
        # prune at every stage, or EViT and SPViT refuse it and A-ViT drops the stage
        keep = (
            tuple(meth.default_keep)
            if len(meth.default_keep) == len(locs)
            else geometric(0.9, len(locs), meth.cumulative)
        )
        plan = meth.token_plan(arch, MethodConfig(locs, keep, {}))
        model.check_plan(plan)
        self.latency = model
        self.method = meth.name
        self.locs = locs
        self.target_ms = float(target_ms)
        self.weight = float(weight)
        self.shape = shape
        self.extra_tokens = extra_tokens
        self.num_tokens = arch.num_tokens
        sel = plan.selectors
        # index into counts = [dense, stage0, stage1, …] for each block's attn and mlp
        self._attn_idx = [
            sum(1 for s in sel if s.block < b or (s.block == b and s.where == "pre"))
            for b in range(arch.depth)
        ]
        self._mlp_idx = [sum(1 for s in sel if s.block <= b) for b in range(arch.depth)]
        self._sel_idx = list(range(len(sel)))  # selector s sees stage s-1's output
        self.n_stages = len(sel)

    # ---- token counts ----------------------------------------------------------------
    def _extra(self, s: int, width: int) -> float:
        e = self.extra_tokens
        if e is None:
            return float(self.num_tokens - width)
        return float(e if isinstance(e, int | float) else e[s])

    def expected_tokens(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tokens after each stage (float64 [S]): mean over the batch of Σ mask, plus
        the tokens the mask does not cover."""
        if len(masks) != self.n_stages:
            raise ValueError(f"expected {self.n_stages} masks (one per stage), got {len(masks)}")
        out = []
        for s, m in enumerate(masks):
            m = m.reshape(m.shape[0], -1).to(torch.float64)
            out.append(m.sum(1).mean(0) + self._extra(s, m.shape[1]))
        return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)

    def predicted_ms_from_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Predicted ms from the token count after each stage (float [S])."""
        c = torch.cat([counts.new_tensor([float(self.num_tokens)]), counts.to(torch.float64)])
        attn, mlp = c[self._attn_idx], c[self._mlp_idx]
        return self.latency.predict_tokens(attn, mlp, c[self._sel_idx], self.method)

    def predicted_ms(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.predicted_ms_from_counts(self.expected_tokens(masks))

    def penalty(self, pred: torch.Tensor) -> torch.Tensor:
        rel = (pred - self.target_ms) / self.target_ms
        if self.shape == "hinge":
            v = torch.relu(rel)
        elif self.shape == "squared":
            v = rel**2
        else:
            v = torch.relu(rel) ** 2
        return self.weight * v

    def forward(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        dtype = masks[0].dtype if len(masks) else torch.float32
        return self.penalty(self.predicted_ms(masks)).to(dtype)


def ratio_mse(masks: Sequence[torch.Tensor], ratios: Sequence[float]) -> torch.Tensor:
    """DynamicViT's keep-ratio loss as its main.py builds it for DeiT (``dynamic``
    False): mean over stages of mean_b (mask.mean(1) − ratio_s)², for comparison (SPViT's,
    and DynamicViT's ``dynamic=True``, square the batch mean: ``forms.spvit.ratio_loss``)."""
    if len(masks) != len(ratios):
        raise ValueError(f"{len(masks)} masks but {len(ratios)} ratios")
    total = 0.0
    for m, r in zip(masks, ratios, strict=True):
        total = total + ((m.reshape(m.shape[0], -1).mean(1) - r) ** 2).mean()
    return total / len(masks)
