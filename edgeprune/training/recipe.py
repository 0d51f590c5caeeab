"""The optimisation side of the recipe, from the field's libraries: AdamW with the
selectors and the backbone at separate learning rates, timm's cosine schedule with
warm-up (stepped per iteration), timm's Mixup/CutMix with label smoothing and its soft
cross-entropy, timm's EMA of the weights, gradient clipping, and mixed precision
(bf16 autocast on the CPU, fp16 with a gradient scaler or bf16 on CUDA)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from edgeprune.core.errors import EdgepruneError

AMP = ("none", "bf16", "fp16")


@dataclass(kw_only=True)
class Optim:
    """Optimiser settings (timm's names)."""

    lr: float = 1e-3  # the selectors' learning rate
    backbone_lr_scale: float = 0.01  # the backbone at lr × this (0: frozen)
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: float | None = None  # max gradient norm
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.1
    ema_decay: float | None = None
    amp: str = "none"


def param_groups(model: nn.Module, selectors: list[nn.Parameter], opt: Optim) -> list[dict]:
    """AdamW groups: the selectors at ``lr``, the backbone at ``lr × backbone_lr_scale``
    (frozen when 0), or all at ``lr`` when the form has no selectors; no weight decay on
    biases, norms and tokens, as timm does."""
    ids = {id(p) for p in selectors}
    # a form without selectors (A-ViT, EViT, ToMe) trains the whole network at one
    # learning rate, as those methods do
    scale = opt.backbone_lr_scale if selectors else 1.0
    groups: list[dict] = []
    for name, params, lr in (
        ("selectors", selectors, opt.lr),
        (
            "backbone",
            [p for p in model.parameters() if id(p) not in ids],
            opt.lr * scale,
        ),
    ):
        if name == "backbone" and scale == 0:
            for p in params:
                p.requires_grad_(False)
            continue
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for ps, wd in ((decay, opt.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": wd, "name": name})
    return groups


def optimizer(
    model: nn.Module, selectors: list[nn.Parameter], opt: Optim, *, epochs: int, iters: int
):
    """AdamW and timm's ``CosineLRScheduler`` in iterations (warm-up from ``warmup_lr``,
    cosine to ``min_lr × the group's scale``)."""
    groups = param_groups(model, selectors, opt)
    if not groups:
        raise EdgepruneError("nothing to train: no selectors and --backbone-lr-scale 0")
    adamw = torch.optim.AdamW(groups, lr=opt.lr)
    sched = CosineLRScheduler(
        adamw,
        t_initial=max(1, epochs * iters),
        lr_min=opt.min_lr,
        warmup_t=round(opt.warmup_epochs * iters),
        warmup_lr_init=opt.warmup_lr,
        t_in_epochs=False,
    )
    return adamw, sched


def mixup(opt: Optim, classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None."""
    if opt.mixup <= 0 and opt.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=opt.mixup,
        cutmix_alpha=opt.cutmix,
        label_smoothing=opt.smoothing,
        num_classes=classes,
    )


def criterion(opt: Optim) -> nn.Module:
    """Soft-target cross-entropy after Mixup; label-smoothed cross-entropy without."""
    if opt.mixup > 0 or opt.cutmix > 0:
        return SoftTargetCrossEntropy()
    if opt.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=opt.smoothing)
    return nn.CrossEntropyLoss()


def ema(model: nn.Module, opt: Optim) -> ModelEmaV3 | None:
    return ModelEmaV3(model, decay=opt.ema_decay) if opt.ema_decay else None


def autocast(amp: str, device: torch.device):
    """The autocast context for ``--amp``: bf16 on the CPU; fp16 or bf16 on CUDA."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise EdgepruneError("--amp fp16 needs CUDA", "use --amp bf16 on the CPU")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs a gradient scaler (bf16 does not)."""
    return torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
