"""SPViT's training-mode forward, on the parameters of edgeprune's static model.

At inference the static model (``SPViTStatic``) keeps a constant top-k per stage and
appends one package token per stage. In training the released model
(PeiyanFlying/SPViT, ``vit_l2_3keep_senet.py``, the model ``main_l2_vit_3keep_senet.py``
trains) keeps every token and carries a **keep mask** instead; at each stage s:

* the multi-head selector (SE head weights) scores the 196 patches *and* the s package
  tokens of earlier stages, given the mask so far with the packages live (its global
  features average the live tokens): the head-weighted log-probabilities (B×(196+s)×2)
  and the head-weighted softmax keep probability p (channel 0);
* the decision is ``gumbel_softmax(log-probs, hard=True)[..., 0] * prev``: a hard 0/1
  mask forward, the Gumbel-softmax gradient backward (straight-through), cumulative;
  the package tokens are kept whatever it samples;
* the package token Σ_i p_i·x_i over the tokens dropped *at this stage* (drop =
  (1 − keep) − (1 − prev), straight-through as well), not divided by Σ p_i, as
  released, is appended to the sequence, which keeps its length otherwise;
* this and every later block attend with DynamicViT's ``softmax_with_policy``: CLS and
  the package tokens always live, the dropped patches masked out.

The head reads CLS; the final 196 patch features and the last mask go to the token
distillation; the B×196 masks are what the released forward returns to
``losses_l2.DistillDiffPruningLoss`` (whose keep-ratio MSE, ``ratio_loss`` here, the
latency-aware loss replaces in edgeprune's loop).

Heads: the released selector lists one in_conv/out_conv module H times, so its heads
share parameters in training (their gradients add up). When the static model's heads
are tied (every released checkpoint; ``init_selectors_`` ties fresh ones), the form
makes their modules one again, as released; the state_dict keeps its H copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from edgeprune.core.methods import MethodConfig
from edgeprune.training.forms.base import FormOutput, TrainingForm, gumbel_softmax_hard
from edgeprune.training.forms.dynamicvit import block_with_policy, mean_keep_decisions

# patch tokens of the architectures a training run takes by default (224 / 16)²
DEFAULT_PATCHES = 196

Noise = bool | Sequence[torch.Tensor]


class SPViTTraining(TrainingForm):
    """The training forward of an ``SPViTStatic`` (parameters shared, not copied).

    ``forward(img, noise)`` -> FormOutput: logits, keep masks (one B×196 per stage), the
    final patch features B×196×C and the last mask (token distillation).
    ``noise``: True samples the Gumbel noise as ``F.gumbel_softmax``; False decides
    without noise (keep where the keep score wins); a sequence gives the Gumbel noise
    of each stage (B×(196+s)×2, −log of Exp(1) draws), for tests against the authors'
    code."""

    method = "spvit"
    learns_schedule = True
    distills = True

    def __init__(self, model: nn.Module, tau: float = 1.0):
        super().__init__(model)
        self.tau = tau
        self.stage_of_block = dict(model.stage_of_block)
        share_tied_heads_(model)

    @classmethod
    def start_config(cls, target: MethodConfig, num_patches: int = DEFAULT_PATCHES) -> MethodConfig:
        """Keep-all at the target's locations, as near as SPViT's static model builds:
        it refuses a stage that drops no token (its package token needs one), so stage
        s keeps ``num_patches − 1 − s`` patches (195, 194, 193 of 196). The form keeps
        every token in training whatever these counts say; only the static build
        reads them."""
        ones = tuple(1.0 for _ in target.prune_locs)
        return MethodConfig(tuple(target.prune_locs), buildable(ones, num_patches), {})

    @classmethod
    def init_selectors_(cls, model: nn.Module, seed: int, logit: float = 3.0) -> None:
        """Fresh selectors that start by keeping (nearly) every token: each head's last
        layer ``out_conv.{h}.4`` small weights and bias ``(+logit, −logit)``, so every
        head's keep probability and the head-weighted mean are ≈ 1 − e^(−2·logit); the
        heads then tied (head 0 copied) and made one module, as released."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pred in model.score_predictor:
                last = pred.out_conv[0][4]
                last.weight.copy_(0.01 * torch.randn(last.weight.shape, generator=g))
                last.bias.copy_(torch.tensor([logit, -logit]))
                pred.tie_heads_()
        share_tied_heads_(model)

    def selector_parameters(self) -> list[nn.Parameter]:
        return list(self.model.score_predictor.parameters())

    def extra_tokens(self) -> list[int]:
        """Tokens after stage s beside the kept patches: CLS and the s + 1 package
        tokens (the earlier stages' and this stage's), as the static plan counts them."""
        return [2 + s for s in range(len(self.model.plan.selectors))]

    def read_schedule(self, images: Iterable[torch.Tensor], draws: int = 4) -> MethodConfig:
        """The keep ratios the trained selectors stand for: the mean Gumbel-hard keep
        decision per stage over ``images`` (``draws`` noise draws each), cumulative, as
        the released ratio loss relates the sampled masks to KEEP_RATE; then made
        buildable (each stage drops at least one more patch, at least one kept)."""
        ratios = mean_keep_decisions(self, images, draws)
        n = self.model.arch.num_patches
        return MethodConfig(tuple(self.model.plan.prune_locs), buildable(ratios, n), {})

    def forward(self, img: torch.Tensor, noise: Noise = True) -> FormOutput:
        m = self.model
        x = m.embed(img)
        b, n = x.shape[0], x.shape[1] - 1
        prev = x.new_ones(b, n, 1)
        policy = None
        masks = []
        for i, blk in enumerate(m.blocks):
            s = self.stage_of_block.get(i)
            if s is not None:
                x, prev = self._stage(s, x, prev, noise)
                masks.append(prev.reshape(b, n))
                live = x.new_ones(b, 1, 1), prev, x.new_ones(b, s + 1, 1)
                policy = torch.cat(live, dim=1)  # CLS, patches, package tokens
            x = block_with_policy(blk, x, policy)
        x = m.norm(x)
        return FormOutput(
            logits=m.head(x[:, 0]),
            masks=masks,
            features=x[:, 1 : n + 1],
            feature_mask=masks[-1].detach() if masks else None,
        )

    def _stage(
        self, s: int, x: torch.Tensor, prev: torch.Tensor, noise: Noise
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage s on x (CLS, N patches, s package tokens) with the patches' mask so far
        ``prev`` (B×N×1) -> (x with this stage's package token appended, the new mask)."""
        b, n = prev.shape[0], prev.shape[1]
        packs = x.new_ones(b, s, 1)
        prev_all = torch.cat([prev, packs], dim=1)  # earlier package tokens: live
        rest = x[:, 1:]
        score, soft = self.model.score_predictor[s](rest, prev_all)  # B×(N+s)×2, B×(N+s)
        keep_all = self._decide(s, score, noise) * prev_all
        keep = torch.cat([keep_all[:, :n], packs], dim=1)  # package tokens always kept
        drop = (1 - keep) - (1 - prev_all)  # dropped at this stage
        package = (rest * (soft.unsqueeze(-1) * drop)).sum(dim=1, keepdim=True)
        return torch.cat([x, package], dim=1), keep[:, :n]

    def _decide(self, s: int, score: torch.Tensor, noise: Noise) -> torch.Tensor:
        """The keep decision B×M×1 from the log-probabilities B×M×2."""
        if noise is True:  # the sample-keyed noise when the loop sets keys (base.gumbel)
            return gumbel_softmax_hard(score, self.gumbel(s, score), self.tau)[..., 0:1]
        if noise is False:
            return (score[..., 0:1] > score[..., 1:2]).to(score.dtype)
        return gumbel_softmax_hard(score, noise[s], self.tau)[..., 0:1]


def ratio_loss(masks: Sequence[torch.Tensor], ratios: Sequence[float]) -> torch.Tensor:
    """SPViT's keep-ratio loss (``DistillDiffPruningLoss``, both of its branches): mean
    over stages of (mask_s.mean() − ratio_s)², the mean over the whole batch, squared
    once; DynamicViT's ``dynamic=True`` loss is this one, its default (what main.py
    builds for DeiT, ``loss.ratio_mse``) squares each image's mean."""
    if len(masks) != len(ratios):
        raise ValueError(f"{len(masks)} masks but {len(ratios)} ratios")
    total = sum((m.mean() - r) ** 2 for m, r in zip(masks, ratios, strict=True))
    return total / len(masks)


def buildable(ratios: Sequence[float], num_patches: int) -> tuple[float, ...]:
    """Cumulative keep ratios SPViT's static model builds: ``int(N·r)`` patches kept,
    each stage dropping at least one more (its package token needs a dropped token) and
    keeping at least one. A ratio that breaks that becomes (k + ½)/N, 4 decimals, for
    the nearest count k that builds."""
    out, prev = [], num_patches
    for s, r in enumerate(ratios):
        k = int(num_patches * r)
        fixed = min(max(k, len(ratios) - s), prev - 1)
        if fixed < 1:
            raise ValueError(f"{len(ratios)} stages need more than {num_patches} patches")
        out.append(r if fixed == k else round((fixed + 0.5) / num_patches, 4))
        prev = fixed
    return tuple(out)


def share_tied_heads_(model: nn.Module) -> None:
    """Selectors whose heads hold equal weights get one in_conv/out_conv module listed
    H times, as the released class builds them: the heads share parameters and their
    gradients add up in training; the state_dict still holds the H copies."""
    for pred in model.score_predictor:
        if pred.num_heads > 1 and pred.heads_tied():
            pred.in_conv = nn.ModuleList([pred.in_conv[0]] * pred.num_heads)
            pred.out_conv = nn.ModuleList([pred.out_conv[0]] * pred.num_heads)


FORM = SPViTTraining
