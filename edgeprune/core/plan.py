"""TokenPlan: how many tokens every block sees. FLOPs, latency, budget and export read it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgeprune.core.arch import Arch


@dataclass(frozen=True)
class SelectorStage:
    """One token-reduction step: where it happens and how many tokens go in and out."""

    block: int  # index of the block it belongs to
    where: str  # "pre" (before the block) or "mid" (between attention and MLP)
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True)
class TokenPlan:
    arch: Arch
    method: str
    prune_locs: tuple[int, ...]
    keep_ratios: tuple[float, ...]
    attn_tokens: tuple[int, ...]  # tokens entering each block (what attention sees)
    mlp_tokens: tuple[int, ...]  # tokens entering each block's MLP (differs for mid-block methods)
    selectors: tuple[SelectorStage, ...] = field(default_factory=tuple)
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        d = self.arch.depth
        if len(self.attn_tokens) != d or len(self.mlp_tokens) != d:
            raise ValueError("a TokenPlan needs one token count per block")

    @property
    def tokens_per_block(self) -> tuple[int, ...]:
        return self.attn_tokens

    @property
    def final_tokens(self) -> int:
        return self.mlp_tokens[-1]

    def to_dict(self) -> dict:
        return {
            "arch": self.arch.name,
            "method": self.method,
            "prune_locs": list(self.prune_locs),
            "keep_ratios": list(self.keep_ratios),
            "tokens_per_block": list(self.attn_tokens),
            "mlp_tokens_per_block": list(self.mlp_tokens),
            "selectors": [asdict(s) for s in self.selectors],
            "options": dict(self.options),
        }


def dense_plan(arch: Arch, method: str = "dense") -> TokenPlan:
    n = (arch.num_tokens,) * arch.depth
    return TokenPlan(arch, method, (), (), n, n)
