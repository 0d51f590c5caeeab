"""Dense DeiT: no pruning. The baseline every speedup is measured against."""

from __future__ import annotations

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.base import Method, MethodConfig
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.core.plan import TokenPlan, dense_plan


class Dense(Method):
    name = "dense"

    def validate(self, cfg: MethodConfig, arch: Arch) -> None:
        if cfg.prune_locs or cfg.keep_ratios:
            raise EdgepruneError(
                "a dense model has no keep schedule",
                "pick a method (e.g. deit_small:dynamicvit@0.7) to use --keep/--locs",
            )

    def token_plan(self, arch: Arch, cfg: MethodConfig) -> TokenPlan:
        return dense_plan(arch)

    def build(self, arch: Arch, plan: TokenPlan) -> VisionTransformer:
        return VisionTransformer(arch)
