"""EViT (Liang et al., ICLR 2022; youweiliang/evit, evit.py).

Scoring: the CLS token's attention to every other token in the pruning block, mean
over heads (``attn[:, :, 0, 1:].mean(1)``): no parameters of its own.
Keeping: inside the pruning block, between attention and MLP, the
``ceil(keep_rate * (N - 1))`` tokens with the highest CLS attention; keep_rate
relative to the current length N (not cumulative). 0.7 at blocks 3, 6, 9:
197 -> 140 -> 100 -> 72 (the fused token of a stage is ranked like any other later).
The rest: fused into one token, sum of the tokens weighted by their CLS attention
(not normalised, as published), appended at the end.

Static rewrite: the published code already keeps a fixed count per stage; TopK with a
constant K, a row gather (GatherND in ONNX), and the complement as a scattered mask
instead of an index complement (the fused token is one MatMul of the masked weights
with the tokens). Same result for distinct attention values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.base import Method, MethodConfig
from edgeprune.core.methods.tokenops import select_top, weighted_rest
from edgeprune.core.models.deit import Block, VisionTransformer
from edgeprune.core.plan import SelectorStage, TokenPlan


def evit_keep(n: int, rate: float) -> int:
    """Non-CLS tokens kept from a sequence of n tokens (EViT: ceil(rate * (n - 1)))."""
    return math.ceil(rate * (n - 1))


def cls_attention_select(x: torch.Tensor, attn: torch.Tensor, keep: int) -> torch.Tensor:
    """x: B×N×C after attention, attn: B×H×N×N -> B×(1+keep+1)×C."""
    cls_attn = attn[:, :, 0, 1:].mean(dim=1)  # B×(N-1)
    rest = x[:, 1:]
    sel = select_top(cls_attn, keep)
    fused = weighted_rest(rest, cls_attn, sel, normalise=False)
    return torch.cat([x[:, :1], sel.rows(rest), fused], dim=1)


def evit_block(blk: Block, x: torch.Tensor, keep: int) -> torch.Tensor:
    out, attn = blk.attn.attend(*blk.attn.qkv_heads(blk.norm1(x)))
    x = x + blk.attn.proj(out)
    x = cls_attention_select(x, attn, keep)
    return x + blk.mlp(blk.norm2(x))


class EViTStatic(VisionTransformer):
    def __init__(self, arch: Arch, plan: TokenPlan):
        super().__init__(arch)
        self.plan = plan
        # patches kept at each pruning block: tokens into the MLP minus CLS and fused
        self.keep_at = {s.block: s.tokens_out - 2 for s in plan.selectors}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img)
        for i, blk in enumerate(self.blocks):
            keep = self.keep_at.get(i)
            x = blk(x) if keep is None else evit_block(blk, x, keep)
        return self.classify(x)


class _EViTSelector(nn.Module):
    """One EViT stage alone: CLS-attention scoring needs the attention matrix, which
    the block computes anyway; the selector's own work is mean over heads, top-k,
    gather and the fused token. Input: B×N×C tokens; attention from a seeded random
    softmax over N so that the stage runs alone."""

    def __init__(self, arch: Arch, tokens_in: int, keep: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(1, arch.num_heads, 1, tokens_in, generator=g)
        self.register_buffer("cls_row", logits.softmax(-1))
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the CLS row of the attention, as the block would hand it over, then the very
        # selection the model's EViT block runs
        return cls_attention_select(x, self.cls_row.expand(x.shape[0], -1, -1, -1), self.keep)


class EViT(Method):
    name = "evit"
    default_locs = (3, 6, 9)
    default_keep = (0.7, 0.7, 0.7)
    cumulative = False
    static_model = EViTStatic
    ratio_name = "EViT keep rate"

    def config_from_param(self, param: str | None, arch: Arch) -> MethodConfig:
        return self.config_from_ratio(param, arch)

    def token_plan(self, arch: Arch, cfg: MethodConfig) -> TokenPlan:
        locs = dict(zip(cfg.prune_locs, cfg.keep_ratios, strict=True))
        attn, mlp, stages, n = [], [], [], arch.num_tokens
        for b in range(arch.depth):
            attn.append(n)
            if b in locs:
                keep = evit_keep(n, locs[b])
                if keep >= n - 1:
                    raise EdgepruneError(
                        f"keep rate {locs[b]} keeps all {n - 1} tokens at block {b}",
                        "EViT then prunes nothing there: lower the rate or drop the location",
                    )
                stages.append(SelectorStage(b, "mid", n, keep + 2))
                n = keep + 2
            mlp.append(n)
        return self.make_plan(arch, cfg, attn, mlp, stages)

    def selector_module(self, arch: Arch, stage: SelectorStage) -> nn.Module:
        return _EViTSelector(arch, stage.tokens_in, stage.tokens_out - 2)

    def selector_macs(self, arch: Arch, plan: TokenPlan) -> list[int]:
        # mean of the CLS row over heads, and the fused token (weighted sum)
        c, h = arch.embed_dim, arch.num_heads
        return [h * (s.tokens_in - 1) + (s.tokens_in - 1) * c for s in plan.selectors]
