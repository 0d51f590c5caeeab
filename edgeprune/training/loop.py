"""One training step and one epoch: the form's forward, the losses, the optimiser.

    loss = CE(logits, labels)                       (timm's soft-target CE after Mixup,
                                                     label-smoothed CE without)
         + distill_weight · (KL(logits ‖ dense teacher) + KL(kept tokens ‖ teacher's))
                                                    (forms that distil: DynamicViT, SPViT)
         + Σ aux                                    (the method's own terms: A-ViT's
                                                     ponder and distribution losses)
         + LatencyAwareSparsityLoss(global mean token counts)
                                                    (forms that learn their schedule)

Batch statistics that are not plain means over images (the token counts of the latency
loss, the kept-token normaliser of the token distillation) are reduced over all the
processes, so N processes compute the global batch's loss.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.distributed import World
from edgeprune.core.errors import EdgepruneError
from edgeprune.training.forms import FormOutput, TrainingForm, teacher_forward
from edgeprune.training.loss import LatencyAwareSparsityLoss


@dataclass(kw_only=True)
class Parts:
    """The moving parts of a run on one process."""

    form: TrainingForm  # the training form (its model is the static model trained)
    ddp: nn.Module  # the form, wrapped in DistributedDataParallel under torchrun
    teacher: nn.Module | None
    crit: LatencyAwareSparsityLoss | None
    criterion: nn.Module
    mixup: object | None
    opt: torch.optim.Optimizer
    sched: object
    ema: object | None
    scaler: object | None
    autocast: object
    clip_grad: float | None
    distill_weight: float
    world: World


def sample_keys(seed: int, epoch: int, index: torch.Tensor) -> list[int]:
    """One integer per image from (seed, epoch, its index in the folder)."""
    return [zlib.crc32(f"{seed}/{epoch}/{int(i)}/noise".encode()) for i in index]


def token_counts(p: Parts, masks: list[torch.Tensor]) -> torch.Tensor:
    """Tokens after each stage: the global batch's mean of each mask's sum, plus the
    tokens the masks do not cover (float64 [S])."""
    local = p.crit.expected_tokens([m.float() for m in masks])
    return p.world.global_mean(local)


def token_distill(p: Parts, out: FormOutput, t_feats: torch.Tensor) -> torch.Tensor:
    """The kept tokens' features against the teacher's, over the kept tokens of the
    *global* batch (the method's term at any number of processes): KL with a softmax over
    channels, or (``token_distill == "mse"``) the mean squared difference."""
    b, n, c = out.features.shape
    keep = out.feature_mask.reshape(b * n) > 0.5
    f = out.features.reshape(b * n, c)[keep].float()
    t = t_feats.reshape(b * n, c)[keep].float()
    if p.form.token_distill == "mse":
        total = (f - t).pow(2).sum()
        per = float(c)  # a mean over the kept tokens' channels
    else:
        total = F.kl_div(F.log_softmax(f, -1), F.log_softmax(t, -1), reduction="sum",
                         log_target=True)  # fmt: skip
        per = 1.0  # batchmean over the kept tokens
    count = p.world.sum(keep.sum().to(total.dtype).detach().reshape(1)).squeeze(0)
    return total * p.world.size / (count.clamp(min=1.0) * per)


def losses(p: Parts, out: FormOutput, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every term of the step's loss (unweighted distillation terms included)."""
    terms = {"ce": p.criterion(out.logits.float(), y)}
    if p.teacher is not None:
        with torch.no_grad():
            t_logits, t_feats = teacher_forward(p.teacher, x)
        terms["distill"] = p.distill_weight * F.kl_div(
            F.log_softmax(out.logits.float(), -1), F.log_softmax(t_logits.float(), -1),
            reduction="batchmean", log_target=True,
        )  # fmt: skip
        if out.features is not None and out.feature_mask is not None:
            terms["token_distill"] = p.distill_weight * token_distill(p, out, t_feats)
    terms.update({k: v.float() for k, v in out.aux.items()})
    if p.crit is not None and out.masks:
        predicted = p.crit.predicted_ms_from_counts(token_counts(p, out.masks))
        terms["latency"] = p.crit.penalty(predicted).float()
        terms["_predicted_ms"] = predicted.detach()
    return terms


def step(p: Parts, x: torch.Tensor, y: torch.Tensor, keys: list[int], where: str) -> dict:
    """One optimisation step; the step's log line (losses, learning rate, predicted ms)."""
    if p.mixup is not None:
        x, y = p.mixup(x, y)
    p.form.sample_keys = keys
    with p.autocast:
        out = p.ddp(x)
    terms = losses(p, out, x, y)
    loss = sum(v for k, v in terms.items() if not k.startswith("_"))
    if p.world.any(not bool(torch.isfinite(loss))):
        raise EdgepruneError(
            f"the loss became {float(loss.detach())} at {where}: stopped, "
            "the last good checkpoint is kept",
            "lower --lr, or use --clip-grad",
        )
    p.opt.zero_grad(set_to_none=True)
    if p.scaler is not None:
        p.scaler.scale(loss).backward()
        p.scaler.unscale_(p.opt)
    else:
        loss.backward()
    if p.clip_grad:
        torch.nn.utils.clip_grad_norm_(p.form.parameters(), p.clip_grad)
    if p.scaler is not None:
        p.scaler.step(p.opt)
        p.scaler.update()
    else:
        p.opt.step()
    if p.ema is not None:
        p.ema.update(p.form.model)
    line = logged(p, {**terms, "loss": loss})
    line["lr"] = max(g["lr"] for g in p.opt.param_groups)
    line["keep"] = [round(float(m.detach().float().mean()), 5) for m in out.masks]
    return line


def logged(p: Parts, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's terms as the global batch's means (each process logs its own batch's
    otherwise; rank 0 writes the log)."""
    names = list(terms)
    vals = torch.stack([terms[k].detach().double().reshape(()) for k in names])
    vals = p.world.sum(vals.to(p.world.device)).cpu() / p.world.size
    return {k.lstrip("_"): float(v) for k, v in zip(names, vals, strict=True)}


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
