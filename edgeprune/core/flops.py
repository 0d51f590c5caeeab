"""Multiply-adds from a TokenPlan, in the convention of the DeiT/DynamicViT papers.

Linear layers and the two attention matmuls count one MAC per multiply-add;
LayerNorm, GELU and softmax count 5, 8 and 5 operations per element, as in
DynamicViT's ``calc_flops.py`` (fvcore plus those handlers). Top-k and gather are
data movement: zero. Selectors are reported apart from the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeprune.core.arch import Arch
from edgeprune.core.plan import TokenPlan

LAYER_NORM_OPS = 5
GELU_OPS = 8
SOFTMAX_OPS = 5


def attn_macs(arch: Arch, n: int) -> int:
    c, h = arch.embed_dim, arch.num_heads
    return (
        LAYER_NORM_OPS * n * c  # norm1
        + n * c * 3 * c  # qkv
        + 2 * n * n * c  # q@k^T and attn@v over all heads
        + SOFTMAX_OPS * h * n * n
        + n * c * c  # proj
    )


def mlp_macs(arch: Arch, n: int) -> int:
    c, hid = arch.embed_dim, arch.mlp_hidden
    return LAYER_NORM_OPS * n * c + 2 * n * c * hid + GELU_OPS * n * hid


def block_macs(arch: Arch, n_attn: int, n_mlp: int | None = None) -> int:
    return attn_macs(arch, n_attn) + mlp_macs(arch, n_attn if n_mlp is None else n_mlp)


def stem_macs(arch: Arch) -> int:
    """Patch embedding (the conv as a matmul)."""
    return arch.num_patches * arch.in_chans * arch.patch_size**2 * arch.embed_dim


def head_macs(arch: Arch) -> int:
    """Final LayerNorm (all tokens) and the classifier on CLS."""
    return arch.embed_dim * arch.num_classes


@dataclass(frozen=True)
class FlopReport:
    dense: float  # GMACs of the unpruned model
    pruned: float  # GMACs of the backbone at the plan's token counts
    selectors: float  # GMACs of all selectors
    per_block: tuple[float, ...]
    per_selector: tuple[float, ...]

    @property
    def total(self) -> float:
        return self.pruned + self.selectors

    def to_dict(self) -> dict:
        return {
            "dense": round(self.dense, 4),
            "pruned": round(self.pruned, 4),
            "selectors": round(self.selectors, 4),
            "total": round(self.total, 4),
            "per_block": [round(x, 5) for x in self.per_block],
            "per_selector": [round(x, 5) for x in self.per_selector],
        }


def plan_flops(plan: TokenPlan, selector_macs: list[int] | None = None) -> FlopReport:
    a = plan.arch
    fixed = stem_macs(a) + head_macs(a) + LAYER_NORM_OPS * plan.final_tokens * a.embed_dim
    per_block = [
        block_macs(a, n, m) for n, m in zip(plan.attn_tokens, plan.mlp_tokens, strict=True)
    ]
    dense = stem_macs(a) + head_macs(a) + LAYER_NORM_OPS * a.num_tokens * a.embed_dim
    dense += a.depth * block_macs(a, a.num_tokens)
    sel = selector_macs or [0] * len(plan.selectors)
    g = 1e9
    return FlopReport(
        dense=dense / g,
        pruned=(fixed + sum(per_block)) / g,
        selectors=sum(sel) / g,
        per_block=tuple(x / g for x in per_block),
        per_selector=tuple(x / g for x in sel),
    )
