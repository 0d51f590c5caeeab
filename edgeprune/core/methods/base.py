"""What a token-pruning method is, to edgeprune.

A method says how tokens are scored, how many are kept, and what happens to the
rest. Everything else (loading, FLOPs, latency, budget, export, the CLI) goes
through this interface and the TokenPlan it produces, with no per-method branches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.tokenops import select_top
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.core.plan import SelectorStage, TokenPlan

if TYPE_CHECKING:
    from torch import nn


@dataclass
class MethodConfig:
    """A method's settings: pruning locations, keep ratios and method-specific options."""

    prune_locs: tuple[int, ...]
    keep_ratios: tuple[float, ...]
    options: dict[str, object] = field(default_factory=dict)


class Method:
    name: ClassVar[str]
    default_locs: ClassVar[tuple[int, ...]] = ()
    default_keep: ClassVar[tuple[float, ...]] = ()
    # True when keep ratios are relative to the original token count (DynamicViT's
    # cumulative rho); False when relative to the tokens entering that stage (EViT).
    cumulative: ClassVar[bool] = True
    # parameter-name prefix that marks this method's checkpoints (None: plain DeiT keys)
    key_prefix: ClassVar[str | None] = None
    # command-line method options this method reads (e.g. ToMe's "r", A-ViT's "calibration")
    user_options: ClassVar[frozenset[str]] = frozenset()
    # the static model class, built as static_model(arch, plan) (see ``build``)
    static_model: ClassVar[type | None] = None
    # what the ``@PARAM`` keep ratio of a built-in spec is called in messages
    ratio_name: ClassVar[str] = "keep ratio"

    # ---- configuration -------------------------------------------------------------
    def default_config(self, arch: Arch) -> MethodConfig:
        return MethodConfig(self.default_locs, self.default_keep)

    def config_from_param(self, param: str | None, arch: Arch) -> MethodConfig:
        """The ``@PARAM`` part of a built-in spec (``deit_small:dynamicvit@0.7``)."""
        if param is not None:
            raise EdgepruneError(f"method '{self.name}' takes no '@' parameter (got '@{param}')")
        return self.default_config(arch)

    def config_from_ratio(self, param: str | None, arch: Arch, **options) -> MethodConfig:
        """``@r``: the geometric schedule of ``r`` at the default locations."""
        if param is None:
            return self.default_config(arch)
        r = parse_ratio(param, what=self.ratio_name)
        n = len(self.default_locs)
        opts = {k: (r if v is RATIO else v) for k, v in options.items()}
        cfg = MethodConfig(self.default_locs, geometric(r, n, self.cumulative), opts)
        self.validate(cfg, arch)
        return cfg

    def with_overrides(
        self,
        cfg: MethodConfig,
        arch: Arch,
        keep: Sequence[float] | None = None,
        locs: Sequence[int] | None = None,
    ) -> MethodConfig:
        new_locs = tuple(locs) if locs is not None else cfg.prune_locs
        new_keep = tuple(keep) if keep is not None else cfg.keep_ratios
        if locs is not None and keep is None and len(new_locs) != len(new_keep):
            raise EdgepruneError(
                f"--locs gives {len(new_locs)} locations but the keep schedule has "
                f"{len(new_keep)} ratios",
                "pass --keep with one ratio per location",
            )
        out = MethodConfig(new_locs, new_keep, dict(cfg.options))
        self.validate(out, arch)
        return out

    def validate(self, cfg: MethodConfig, arch: Arch) -> None:
        validate_locs_and_ratios(cfg.prune_locs, cfg.keep_ratios, arch, self.cumulative)

    # ---- the plan ------------------------------------------------------------------
    def token_plan(self, arch: Arch, cfg: MethodConfig) -> TokenPlan:
        raise NotImplementedError

    def make_plan(
        self,
        arch: Arch,
        cfg: MethodConfig,
        attn: Sequence[int],
        mlp: Sequence[int],
        stages: Sequence[SelectorStage],
    ) -> TokenPlan:
        """The TokenPlan of ``cfg``, from the token counts a method worked out."""
        return TokenPlan(
            arch,
            self.name,
            cfg.prune_locs,
            cfg.keep_ratios,
            tuple(attn),
            tuple(mlp),
            tuple(stages),
            tuple(sorted(cfg.options.items())),
        )

    # ---- the model -----------------------------------------------------------------
    def build(self, arch: Arch, plan: TokenPlan) -> nn.Module:
        """The static (fixed top-k) PyTorch module for this plan, timm-compatible keys."""
        if self.static_model is None:
            raise NotImplementedError
        return self.static_model(arch, plan)

    def selector_module(self, arch: Arch, stage: SelectorStage) -> nn.Module | None:
        """A standalone module doing one selector stage on its own, for profiling:
        ``forward(x: B×tokens_in×C) -> B×tokens_out×C`` with seeded random weights,
        doing exactly the extra work the static graph does at that stage (scoring,
        top-k, gather, fusing). None for a method without selectors."""
        return None

    def selector_macs(self, arch: Arch, plan: TokenPlan) -> list[int]:
        """Multiply-adds of each selector stage (scoring, top-k, gather, fusing)."""
        return [0 for _ in plan.selectors]

    def report(self, cfg: MethodConfig) -> dict | None:
        """Method-specific facts for the export manifest (``method_report``), e.g. how
        close a calibrated rewrite is to the published model. None: nothing to say."""
        return None

    # ---- checkpoints ---------------------------------------------------------------
    def matches(self, keys: Sequence[str]) -> bool:
        return self.key_prefix is not None and any(k.startswith(self.key_prefix) for k in keys)

    def config_from_checkpoint(
        self, state_dict: Mapping[str, torch.Tensor], arch: Arch, path: Path | None
    ) -> MethodConfig:
        return self.default_config(arch)


def validate_locs_and_ratios(
    locs: Sequence[int], ratios: Sequence[float], arch: Arch, cumulative: bool
) -> None:
    if len(locs) != len(ratios):
        raise EdgepruneError(
            f"{len(locs)} pruning locations but {len(ratios)} keep ratios",
            "give one keep ratio per location",
        )
    for loc in locs:
        if not 0 < loc < arch.depth:
            raise EdgepruneError(
                f"pruning location {loc} is outside the model",
                f"locations are block indices 1..{arch.depth - 1} for depth {arch.depth}",
            )
    if len(set(locs)) != len(locs):
        raise EdgepruneError(f"duplicated pruning location in {list(locs)}")
    if list(locs) != sorted(locs):
        raise EdgepruneError(f"pruning locations must increase, got {list(locs)}")
    for r in ratios:
        if not (isinstance(r, int | float) and math.isfinite(r) and 0 < r <= 1):
            raise EdgepruneError(f"keep ratio {r} is outside (0, 1]")
    if cumulative:
        for a, b in zip(ratios, ratios[1:], strict=False):
            if b > a:
                raise EdgepruneError(
                    f"keep ratios {list(ratios)} grow from {a} to {b}",
                    "ratios are cumulative (of the original tokens), so they cannot grow",
                )


# ---- pieces several methods share ---------------------------------------------------
class PredictorMethod(Method):
    """A learned ``score_predictor.{stage}`` before blocks 3, 6, 9 that keeps
    ``int(196 * rho)`` patch tokens, rho cumulative (DynamicViT, SPViT); ``@r`` of a
    built-in spec is the geometric schedule ``[r, r², r³]``."""

    default_locs = (3, 6, 9)
    cumulative = True
    key_prefix = "score_predictor."

    def config_from_param(self, param: str | None, arch: Arch) -> MethodConfig:
        return self.config_from_ratio(param, arch)

    @staticmethod
    def kept_patches(arch: Arch, ratio: float, block: int) -> int:
        """Patch tokens kept at ``block`` by a ratio of the original patches
        (``int(196 * rho)``); at least one."""
        kept = int(arch.num_patches * ratio)
        if kept < 1:
            raise EdgepruneError(
                f"keep ratio {ratio} keeps no patch token at block {block}",
                f"use a ratio of at least {1 / arch.num_patches:.4f}",
            )
        return kept

    @staticmethod
    def predictor_stages(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...]]:
        """Selector stages in a ``score_predictor.{s}.*`` checkpoint, and their default
        locations (3, 6, 9 for three; every third block otherwise)."""
        n = len({int(k.split(".")[1]) for k in state_dict if k.startswith("score_predictor.")})
        return n, (3, 6, 9) if n == 3 else tuple(range(3, 3 * n + 1, 3))[:n]

    def stage_alone(self, arch: Arch, stages: Sequence[SelectorStage]) -> StageAlone:
        """The last of ``stages`` of this method's static model, alone (a depth-0 model:
        no blocks; the earlier stages only shape the model, e.g. SPViT's package tokens)."""

        a0 = replace(arch, depth=0)
        plan = TokenPlan(a0, self.name, (), (), (), (), tuple(stages))
        return StageAlone(self.build(a0, plan), len(stages) - 1)


RATIO = object()  # config_from_ratio(..., base_ratio=RATIO) records r itself


def geometric(r: float, n: int, cumulative: bool = True) -> tuple[float, ...]:
    """The geometric keep schedule of ``n`` stages: ``[r, r², r³…]`` for cumulative
    ratios (DynamicViT's rho), ``[r, r, r…]`` for ratios relative to each stage's input."""
    return tuple(round(r ** (i + 1), 10) if cumulative else r for i in range(n))


def parse_ratio(text: str, what: str) -> float:
    """A keep ratio in (0, 1] from the ``@PARAM`` of a built-in spec."""
    try:
        r = float(text)
    except ValueError:
        raise EdgepruneError(f"{what} '{text}' is not a number", "e.g. 0.7") from None
    if not (0 < r <= 1):
        raise EdgepruneError(f"{what} {text} is outside (0, 1]")
    return r


class StaticTopKViT(VisionTransformer):
    """DeiT whose pre-block selectors keep a constant number of patch tokens.

    Subclasses say how the patch tokens are scored (``score``)."""

    def __init__(self, arch: Arch, plan: TokenPlan):
        super().__init__(arch)
        self.plan = plan
        self.stage_of_block = {s.block: i for i, s in enumerate(plan.selectors)}
        self.keep_counts = [self.patches_kept(s) for s in plan.selectors]

    def patches_kept(self, stage: SelectorStage) -> int:
        return stage.tokens_out - 1  # all but CLS

    def score(self, stage: int, patches: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        sel = select_top(self.score(stage, patches), self.keep_counts[stage])
        return torch.cat([cls, sel.rows(patches)], dim=1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img)
        for i, blk in enumerate(self.blocks):
            stage = self.stage_of_block.get(i)
            if stage is not None:
                x = self.select(stage, x)
            x = blk(x)
        return self.classify(x)


class StageAlone(torch.nn.Module):
    """One selector stage of a static model run alone, for the profile: ``forward`` is
    that model's own ``select`` at ``stage``, so the timed selector cannot drift from
    the one the model runs."""

    def __init__(self, model: StaticTopKViT, stage: int, seed: int = 0):
        super().__init__()
        model.init_random(seed)  # as a built-in spec's model (SPViT: tied heads)
        self.model, self.stage = model.eval(), stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.select(self.stage, x)
