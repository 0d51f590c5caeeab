"""DynamicViT (Rao et al., NeurIPS 2021; raoyongming/DynamicViT, models/dyvit.py).

Scoring: a per-stage PredictorLG over the patch tokens (not CLS): LayerNorm, Linear,
GELU; the first C/2 channels stay per token, the last C/2 are averaged over the live
tokens and broadcast; then an MLP C -> C/2 -> C/4 -> 2 with LogSoftmax. Channel 0 is
the keep score.
Keeping: at inference ``int(196 * rho_s)`` patch tokens with the highest score,
rho cumulative (default [r, r^2, r^3] at blocks [3, 6, 9]), in descending score order.
The rest: dropped.

The static rewrite replaces argsort+slice by TopK with a constant K and the
index-select by a row gather (GatherND in ONNX), which is the same computation for
distinct scores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.base import (
    RATIO,
    MethodConfig,
    PredictorMethod,
    StaticTopKViT,
    geometric,
)
from edgeprune.core.plan import SelectorStage, TokenPlan


class PredictorLG(nn.Module):
    """DynamicViT's score predictor; parameter names as in the published checkpoints."""

    def __init__(self, embed_dim: int):
        super().__init__()
        c = embed_dim
        self.in_conv = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(c, c // 2),
            nn.GELU(),
            nn.Linear(c // 2, c // 4),
            nn.GELU(),
            nn.Linear(c // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """x: B×N×C patch tokens; policy: B×N×1 live mask (None: all live). -> B×N×2."""
        x = self.in_conv(x)
        c = x.shape[-1]
        local_x = x[:, :, : c // 2]
        if policy is None:
            global_x = x[:, :, c // 2 :].mean(dim=1, keepdim=True)
        else:
            global_x = (x[:, :, c // 2 :] * policy).sum(dim=1, keepdim=True) / policy.sum(
                dim=1, keepdim=True
            )
        # out_conv[0] on cat([local, global broadcast over N]) computed as
        # local·W_localᵀ + (global·W_globalᵀ + b): the global half is one row, so the
        # graph has no Expand/Concat of N×C/2 and half the MACs in that layer
        first = self.out_conv[0]
        w_local, w_global = first.weight[:, : c // 2], first.weight[:, c // 2 :]
        h = local_x @ w_local.t() + (global_x @ w_global.t() + first.bias)
        return self.out_conv[1:](h)


def predictor_macs(c: int, n: int) -> int:
    """Multiply-adds of PredictorLG on n tokens (DynamicViT's calc_flops convention:
    LayerNorm 5, GELU 8, softmax 5 operations per element)."""
    linear = n * (c * c + c * (c // 2) + (c // 2) * (c // 4) + (c // 4) * 2)
    elementwise = n * (5 * c + 8 * c + 8 * (c // 2) + 8 * (c // 4) + 5 * 2)
    return linear + elementwise + n * c // 2  # + the global average


class DynamicViTStatic(StaticTopKViT):
    def __init__(self, arch: Arch, plan: TokenPlan):
        super().__init__(arch, plan)
        self.score_predictor = nn.ModuleList(PredictorLG(arch.embed_dim) for _ in plan.selectors)

    def score(self, stage: int, patches: torch.Tensor) -> torch.Tensor:
        # at inference every token still present is live, so the policy mean is a mean
        return self.score_predictor[stage](patches)[:, :, 0]


class DynamicViT(PredictorMethod):
    name = "dynamicvit"
    default_keep = (0.7, 0.49, 0.343)
    static_model = DynamicViTStatic
    ratio_name = "DynamicViT base keep ratio"

    def config_from_param(self, param: str | None, arch: Arch) -> MethodConfig:
        return self.config_from_ratio(param, arch, base_ratio=RATIO)

    def matches(self, keys) -> bool:
        # SPViT's multi-head selector shares the prefix but has senet / per-head convs
        return any(
            k.startswith("score_predictor.") and ".in_conv.0." in k for k in keys
        ) and not any(".senet." in k for k in keys)

    def token_plan(self, arch: Arch, cfg: MethodConfig) -> TokenPlan:
        attn, stages = [], []
        n = arch.num_tokens
        locs = dict(zip(cfg.prune_locs, cfg.keep_ratios, strict=True))
        for b in range(arch.depth):
            if b in locs:
                kept = self.kept_patches(arch, locs[b], b)
                stages.append(SelectorStage(b, "pre", n, kept + 1))
                n = kept + 1
            attn.append(n)
        return self.make_plan(arch, cfg, attn, attn, stages)

    def selector_module(self, arch: Arch, stage: SelectorStage) -> nn.Module:
        return self.stage_alone(arch, [stage])

    def selector_macs(self, arch: Arch, plan: TokenPlan) -> list[int]:
        # the predictor sees the patch tokens entering the stage; top-k and gather are
        # data movement and counted as zero multiply-adds
        return [predictor_macs(arch.embed_dim, s.tokens_in - 1) for s in plan.selectors]

    def config_from_checkpoint(
        self, state_dict: Mapping[str, torch.Tensor], arch: Arch, path: Path | None
    ) -> MethodConfig:
        n, locs = self.predictor_stages(state_dict)
        if n == 0:
            raise EdgepruneError("no score_predictor.* keys in a DynamicViT checkpoint")
        # DynamicViT's released files carry the ratio in their names (…_r0.7.pth)
        r = 0.7
        m = re.search(r"(?:^|[_\-.])r(0?\.\d+|1(?:\.0+)?)(?=[_\-.]|$)", path.stem if path else "")
        if m:
            r = float(m.group(1))
        return MethodConfig(locs, geometric(r, n), {"base_ratio": r})
