"""EViT's training-mode forward, on the parameters of edgeprune's static model.

EViT (youweiliang/evit) trains with the very selection it deploys: inside each pruning
block, between attention and MLP, the ``ceil(rate · (N − 1))`` tokens with the highest
CLS attention (mean over heads) go on and the rest are fused into one token weighted by
that attention (``evit.py``, ``Block.forward`` with ``fuse_token``). Tokens are really
dropped, so shapes shrink and training gets cheaper. The gradient reaches the selection
through the fused token's attention weights; the top-k itself is not differentiated.

What moves during training is the keep rate: ``helpers.adjust_keep_rate`` holds it at 1
until ``shrink_start_epoch``, then lowers it along a cosine, per iteration, to
``base_keep_rate`` over ``shrink_epochs`` (``engine.train_one_epoch``). Here the run is
measured as a fraction: ``set_progress(p)`` with ``p = iteration / (iterations per
epoch · epochs)`` gives exactly their keep rate at that iteration when ``shrink_start``
and ``shrink_span`` are ``shrink_start_epoch / epochs`` and ``shrink_epochs / epochs``
(``shrink_fractions``). The defaults are those of EViT's released training script
(``run_code.sh``: shrink_start_epoch 10, shrink_epochs 100, epochs 300, training from
scratch); its fine-tuning script from a DeiT checkpoint (``finetune.sh``, 30 epochs)
uses no warm-up at all (0 and 0): ``shrink_start=0, shrink_span=0``. A rate of 1 prunes
nothing (dense blocks), as there; so does a rate whose count keeps every token.

The target keep rate of each stage is the budget's (the static model's plan); stages
with different targets each follow the same cosine from 1 to their own target (one
target for all, as EViT trains, gives EViT's rate exactly). No parameters of its own:
the trained weights are the static model's, in timm's key layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from edgeprune.core.methods import MethodConfig
from edgeprune.core.methods.evit import evit_block, evit_keep
from edgeprune.training.forms.base import FormOutput, TrainingForm

# EViT's run_code.sh: --shrink_start_epoch 10 --shrink_epochs 100 --epochs 300
SHRINK_START = 10 / 300
SHRINK_SPAN = 100 / 300


def shrink_fractions(shrink_start_epoch: float, shrink_epochs: float, epochs: float):
    """EViT's warm-up given in epochs (its command-line options) -> (shrink_start,
    shrink_span) as fractions of a run of ``epochs`` epochs."""
    if epochs <= 0:
        raise ValueError("a run needs at least one epoch")
    return shrink_start_epoch / epochs, shrink_epochs / epochs


def keep_rate_at(
    progress: float,
    base_keep_rate: float,
    shrink_start: float = SHRINK_START,
    shrink_span: float = SHRINK_SPAN,
) -> float:
    """EViT's keep rate at ``progress`` (the fraction of the run done), as
    ``adjust_keep_rate`` computes it with iterations and epochs as fractions of the run:
    exactly 1 before ``shrink_start`` (no pruning at all), ``base_keep_rate`` from
    ``shrink_start + shrink_span`` on, a cosine from 1 down to it in between."""
    if progress < shrink_start:
        return 1
    if progress >= shrink_start + shrink_span:
        return base_keep_rate
    t = (progress - shrink_start) / shrink_span
    return base_keep_rate + (1 - base_keep_rate) * (math.cos(t * math.pi) + 1) * 0.5


class EViTTraining(TrainingForm):
    """The training forward of an ``EViTStatic`` (parameters shared, not copied), at the
    keep rates of the moment (``set_progress``; ``set_keep_rates`` fixes them)."""

    method = "evit"
    learns_schedule = False
    distills = False

    def __init__(
        self,
        model: nn.Module,
        shrink_start: float = SHRINK_START,
        shrink_span: float = SHRINK_SPAN,
    ):
        super().__init__(model)
        if shrink_start < 0 or shrink_span < 0:
            raise ValueError("shrink_start and shrink_span are fractions of the run (≥ 0)")
        self.shrink_start, self.shrink_span = shrink_start, shrink_span
        plan = model.plan
        self.targets = dict(zip(plan.prune_locs, plan.keep_ratios, strict=True))
        self.rates: dict[int, float] = {}
        self.set_progress(0.0)

    def set_progress(self, progress: float) -> None:
        self.rates = {
            b: keep_rate_at(progress, t, self.shrink_start, self.shrink_span)
            for b, t in self.targets.items()
        }

    def set_keep_rates(self, rates: float | Sequence[float]) -> None:
        """Fix the keep rate of every stage (one rate for all, or one per stage)."""
        if isinstance(rates, (int, float)):
            rates = [rates] * len(self.targets)
        self.rates = dict(zip(self.targets, rates, strict=True))

    def keep_rates(self) -> tuple[float, ...]:
        """The keep rate of each stage now, in plan order."""
        return tuple(self.rates[b] for b in self.targets)

    def read_schedule(self, images: Iterable[torch.Tensor] = ()) -> MethodConfig:
        """The budget's schedule, as the static model was built: the keep rates the
        warm-up ends at (nothing is read off the images)."""
        plan = self.model.plan
        return MethodConfig(tuple(plan.prune_locs), tuple(plan.keep_ratios), dict(plan.options))

    def forward(self, img: torch.Tensor, noise: bool = True) -> FormOutput:
        """Logits at the keep rates of the moment (EViT samples nothing: ``noise`` is
        not used); no masks (the schedule is fixed), no terms of its own."""
        m = self.model
        x = m.embed(img)
        for i, blk in enumerate(m.blocks):
            keep = self._keep(i, x.shape[1])
            x = blk(x) if keep is None else evit_block(blk, x, keep)
        return FormOutput(logits=m.classify(x))

    def _keep(self, block: int, n: int) -> int | None:
        """Patch tokens kept at ``block`` from ``n`` tokens now; None: no pruning there
        (not a pruning block, a rate of 1, or a count that keeps every token)."""
        rate = self.rates.get(block)
        if rate is None or rate >= 1:
            return None
        keep = evit_keep(n, rate)
        if keep >= n - 1:
            return None
        if keep < 1:
            raise ValueError(f"EViT keep rate {rate} keeps no token at block {block}")
        return keep


FORM = EViTTraining
