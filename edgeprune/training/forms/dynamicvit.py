"""DynamicViT's training-mode forward, on the parameters of edgeprune's static model.

At inference the static model (``DynamicViTStatic``) keeps a constant top-k per stage.
In training DynamicViT (raoyongming/DynamicViT, ``models/dyvit.py``) keeps every token
and carries a **keep mask** instead:

* at each pruning stage the predictor scores the patch tokens given the mask so far
  (``PredictorLG(x, prev_decision)``: its global feature averages the live tokens);
* the decision is ``gumbel_softmax(log-probs, hard=True)[..., 0] * prev_decision``: a
  hard 0/1 mask forward, the Gumbel-softmax gradient backward (straight-through);
* every block from the first stage on attends with ``softmax_with_policy``: the
  attention of a query to a dropped key is removed (a token still sees itself) and
  each row is renormalised, so dropped tokens no longer influence the kept ones;
* the head reads CLS; the final patch features are returned for token distillation.

This module holds no parameters of its own: ``DynamicViTTraining(model)`` runs the
static model's ``patch_embed``/``blocks``/``score_predictor``/``norm``/``head``, so the
trained weights are the static model's, in DynamicViT's key layout, ready for
``edgeprune export``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.methods import MethodConfig
from edgeprune.core.models.deit import Block
from edgeprune.training.forms.base import FormOutput, TrainingForm, gumbel_softmax_hard


def softmax_with_policy(attn: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6):
    """DynamicViT's masked softmax. attn: B×H×N×N logits, policy: B×N×1 (1 = live)."""
    b, n, _ = policy.shape
    attn_policy = policy.reshape(b, 1, 1, n)
    eye = torch.eye(n, dtype=attn_policy.dtype, device=attn_policy.device).view(1, 1, n, n)
    attn_policy = attn_policy + (1.0 - attn_policy) * eye
    max_att = attn.max(dim=-1, keepdim=True)[0]
    attn = (attn - max_att).to(torch.float32).exp() * attn_policy.to(torch.float32)
    attn = (attn + eps / n) / (attn.sum(dim=-1, keepdim=True) + eps)
    return attn.type_as(max_att)


def block_with_policy(blk: Block, x: torch.Tensor, policy: torch.Tensor | None) -> torch.Tensor:
    """One DeiT block of the static model, attending under a keep mask (None: all live)."""
    if policy is None:
        return blk(x)
    att = blk.attn
    q, k, v = att.qkv_heads(blk.norm1(x))
    a = softmax_with_policy((q * att.scale) @ k.transpose(-2, -1), policy)
    o = a @ v
    bsz, h, n, d = o.shape
    x = x + att.proj(o.transpose(1, 2).reshape(bsz, n, h * d))
    return x + blk.mlp(blk.norm2(x))


class DynamicViTTraining(TrainingForm):
    """The training forward of a ``DynamicViTStatic`` (parameters shared, not copied).

    ``forward(img)`` -> FormOutput: logits, keep masks (one B×N per stage), the final
    patch features B×N×C and the last mask (token distillation).
    ``noise=False``: deterministic decisions (keep where the keep score wins), as a
    noiseless version of training's sampling; a sequence gives the Gumbel noise of each
    stage (B×N×2, as ``F.gumbel_softmax`` adds it: the golden test's stored draws)."""

    method = "dynamicvit"
    learns_schedule = True
    distills = True
    token_distill = "mse"  # main.py builds its loss with mse_token=True for DeiT

    def __init__(self, model: nn.Module, tau: float = 1.0):
        super().__init__(model)
        self.tau = tau
        self.stage_of_block = dict(model.stage_of_block)

    @classmethod
    def start_config(cls, target: MethodConfig, num_patches: int = 196) -> MethodConfig:
        return MethodConfig(tuple(target.prune_locs), tuple(1.0 for _ in target.prune_locs), {})

    @classmethod
    def init_selectors_(cls, model: nn.Module, seed: int) -> None:
        init_keep_all_(model, seed=seed)

    def selector_parameters(self) -> list[nn.Parameter]:
        return list(self.model.score_predictor.parameters())

    def read_schedule(self, images: Iterable[torch.Tensor], draws: int = 4) -> MethodConfig:
        """The keep ratios the trained predictors stand for, as DynamicViT relates
        training to inference (its ratio loss holds the mean *sampled* mask at ρ,
        inference keeps int(N·ρ)): the mean Gumbel-hard keep decision per stage over
        ``images`` (``draws`` noise draws per image), cumulative, non-increasing, at
        least one token."""
        ratios = mean_keep_decisions(self, images, draws)
        return MethodConfig(tuple(self.model.plan.prune_locs), ratios, {})

    def forward(self, img: torch.Tensor, noise: bool | Sequence[torch.Tensor] = True) -> FormOutput:
        m = self.model
        x = m.embed(img)
        b, n = x.shape[0], x.shape[1] - 1
        prev = x.new_ones(b, n, 1)
        policy = None
        masks = []
        for i, blk in enumerate(m.blocks):
            s = self.stage_of_block.get(i)
            if s is not None:
                score = m.score_predictor[s](x[:, 1:], prev)  # B×N×2 log-probabilities
                if noise is False:
                    keep = (score[:, :, 0:1] > score[:, :, 1:2]).to(x.dtype)
                else:
                    g = self.gumbel(s, score) if noise is True else noise[s]
                    keep = gumbel_softmax_hard(score, g, self.tau)[:, :, 0:1]
                keep = keep * prev
                keep = _at_least_one(keep, score, prev)
                masks.append(keep.reshape(b, n))
                policy = torch.cat([x.new_ones(b, 1, 1), keep], dim=1)
                prev = keep
            x = block_with_policy(blk, x, policy)
        x = m.norm(x)
        return FormOutput(
            logits=m.head(x[:, 0]),
            masks=masks,
            features=x[:, 1:],
            feature_mask=masks[-1] if masks else None,
        )


def mean_keep_decisions(
    form: TrainingForm, images: Iterable[torch.Tensor], draws: int = 4, seed: int = 1234
) -> tuple[float, ...]:
    """Cumulative keep ratios from a form's sampled masks: the mean keep decision per
    stage over ``images`` (``draws`` noise draws each, the noise seeded and the global
    generator restored), non-increasing, at least one patch token."""
    was = form.training
    form.eval()
    sums, n = None, 0
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        for x in images:
            for _ in range(draws):
                masks = form(x).masks
                means = torch.stack([mk.float().mean(1).sum() for mk in masks]).cpu()
                sums = means if sums is None else sums + means
                n += x.shape[0]
    torch.random.set_rng_state(state)
    form.train(was)
    if sums is None:
        raise ValueError("no images to read the schedule from")
    n_patches = form.model.arch.num_patches
    out, prev = [], 1.0
    for v in (sums / n).tolist():
        r = min(prev, max(1.0 / n_patches, round(v, 4)))
        out.append(r)
        prev = r
    return tuple(out)


def _at_least_one(keep: torch.Tensor, score: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Where an image would keep no patch token, keep its best-scored live one (the
    static model always keeps at least one; an empty mask would make the next
    predictor's mean over live tokens 0/0)."""
    empty = keep.sum(dim=1, keepdim=True) == 0  # B×1×1
    if not bool(empty.any()):
        return keep
    s = score[:, :, 0:1].masked_fill(prev == 0, float("-inf"))
    best = F.one_hot(s.squeeze(-1).argmax(dim=1), s.shape[1]).unsqueeze(-1).to(keep.dtype)
    return torch.where(empty, best, keep)


def teacher_forward(model: nn.Module, img: torch.Tensor):
    """A dense DeiT's logits and final patch features (DynamicViT's teacher outputs)."""
    x = model.embed(img)
    for blk in model.blocks:
        x = blk(x)
    x = model.norm(x)
    return model.head(x[:, 0]), x[:, 1:]


def distillation_losses(
    logits: torch.Tensor,
    feats: torch.Tensor,
    mask: torch.Tensor,
    t_logits: torch.Tensor,
    t_feats: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DynamicViT's two distillation terms: KL of the logits to the teacher's
    (batchmean) and KL of the kept tokens' features to the teacher's (softmax over
    channels, as ``DistillDiffPruningLoss_dynamic``)."""
    cls_kl = F.kl_div(
        F.log_softmax(logits, dim=-1),
        F.log_softmax(t_logits, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    bsz, n, c = feats.shape
    keep = mask.reshape(bsz * n) > 0.5
    if int(keep.sum()) == 0:
        return cls_kl, feats.new_zeros(())
    tok_kl = F.kl_div(
        F.log_softmax(feats.reshape(bsz * n, c)[keep], dim=-1),
        F.log_softmax(t_feats.reshape(bsz * n, c)[keep], dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return cls_kl, tok_kl


def init_keep_all_(model: nn.Module, logit: float = 3.0, seed: int = 0) -> None:
    """Fresh predictors that start by keeping (nearly) every token: the last layer's
    weights small, its bias ``(+logit, −logit)``, so P(keep) ≈ 1 − e^(−2·logit) and the
    student starts as the dense teacher (the fine-tuning then prunes under the loss)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pred in model.score_predictor:
            last = pred.out_conv[4]
            last.weight.copy_(0.01 * torch.randn(last.weight.shape, generator=g))
            last.bias.copy_(torch.tensor([logit, -logit]))


FORM = DynamicViTTraining
