"""What every method's training form offers the training loop.

A training form runs a method's *training-mode* forward (as the authors' training code
runs it: soft or Gumbel-hard masks, a keep-rate warm-up, ponder costs…) over the
parameters of edgeprune's static model of that method, so that what is trained is what
``edgeprune export`` deploys, in the method's own key layout.

    form = get_form("spvit")(model)                # model: the method's static model
    out = form(images)                             # FormOutput
    loss = ce(out.logits, y) + sum(out.aux.values()) + latency_loss(out.masks)
    cfg = form.read_schedule(batches)              # the MethodConfig to deploy

The loop adds, for every method, the classification loss (and, where ``distills``,
distillation from the dense teacher) and, where ``learns_schedule``, the latency-aware
sparsity loss on ``out.masks``; everything else a method trains with comes in ``aux``,
weighted as its own code weighs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from edgeprune.core.methods import MethodConfig


def gumbel_softmax_hard(
    logits: torch.Tensor, gumbel: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """``F.gumbel_softmax(logits, tau, hard=True)`` with the noise given: one-hot of the
    argmax forward, the softmax's gradient backward (straight-through)."""
    soft = ((logits + gumbel) / tau).softmax(-1)
    index = soft.argmax(-1, keepdim=True)
    hard = torch.zeros_like(logits).scatter_(-1, index, 1.0)
    return hard - soft.detach() + soft


@dataclass(kw_only=True)
class FormOutput:
    """One training forward's outputs.

    logits: B×classes.
    masks: one B×N keep mask per pruning stage of the model's plan, in plan order
        (1 = the token goes on; soft, or hard with a straight-through gradient): what
        the latency-aware sparsity loss turns into expected token counts. Empty for a
        form whose schedule is fixed (``learns_schedule = False``).
    aux: the method's own training terms (A-ViT's ponder and distribution losses…),
        each already weighted as the authors' code weighs it; the loop adds them.
    features / feature_mask: final patch tokens B×N×C and which are kept (B×N), for
        DynamicViT-style token distillation (``distills``); None otherwise.
    """

    logits: torch.Tensor
    masks: list[torch.Tensor] = field(default_factory=list)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None
    feature_mask: torch.Tensor | None = None


class TrainingForm(nn.Module):
    """A method's training forward over its static model (parameters shared).

    Subclasses set ``method`` and implement ``forward`` and ``read_schedule``; the
    class-level flags tell the loop which losses apply."""

    method: ClassVar[str]
    # True: the masks are learned and the latency loss pushes them to the budget's aim
    # (DynamicViT, SPViT, A-ViT); False: the schedule comes from the budget as it is
    # (EViT's keep rate, ToMe's r) and the latency is fixed by it
    learns_schedule: ClassVar[bool] = True
    # trains against the frozen dense teacher (DynamicViT's and SPViT's losses)
    distills: ClassVar[bool] = False
    # the kept tokens' distillation term: "kl" (softmax over channels, SPViT's) or "mse"
    # (the mean squared difference, DynamicViT's for DeiT: ``mse_token=True``)
    token_distill: ClassVar[str] = "kl"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # set by the loop before each forward: one integer per image of the batch, from
        # the run's seed, the epoch and the image's index (``gumbel``)
        self.sample_keys: list[int] | None = None

    def gumbel(self, stage: int, like: torch.Tensor) -> torch.Tensor:
        """Gumbel(0, 1) noise shaped like ``like`` (B×…) for pruning stage ``stage``.

        With ``sample_keys`` set, image b's noise comes from a generator seeded by its
        key and the stage, so an image gets the same noise whichever process trains it
        and in whichever batch (one process and N processes run the same training);
        otherwise from torch's global generator, as ``F.gumbel_softmax`` draws it."""
        if self.sample_keys is None:
            u = torch.rand_like(like, dtype=torch.float32)
        else:
            if len(self.sample_keys) != like.shape[0]:
                raise ValueError(
                    f"{len(self.sample_keys)} sample keys for a batch of {like.shape[0]}"
                )
            u = torch.stack(
                [
                    torch.rand(
                        like.shape[1:], generator=torch.Generator().manual_seed(k * 1009 + stage)
                    )
                    for k in self.sample_keys
                ]
            ).to(like.device)
        tiny = torch.finfo(torch.float32).tiny
        return (-torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))).to(like.dtype)

    def forward(self, img: torch.Tensor, noise: bool = True) -> FormOutput:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def start_config(cls, target: MethodConfig, num_patches: int = 196) -> MethodConfig:
        """The configuration the static model is built at to start training toward
        ``target`` (the budget's schedule): the target itself where the schedule is
        fixed; where it is learned, the target's locations with selectors that start by
        keeping every token (overridden there). ``num_patches``: the model's patch
        tokens (what a ratio of a static model that must drop one is made from)."""
        return target

    @classmethod
    def init_selectors_(cls, model: nn.Module, seed: int) -> None:
        """New selectors (training from a dense model) start by keeping every token, so
        the student starts as the dense teacher; a no-op for a method without any."""

    def selector_parameters(self) -> list[nn.Parameter]:
        """The parameters trained at the selectors' learning rate (the rest is the
        backbone, trained at ``lr × backbone_lr_scale``)."""
        return []

    def extra_tokens(self) -> int | Sequence[int] | None:
        """Tokens per stage the masks do not cover (``LatencyAwareSparsityLoss``'s
        ``extra_tokens``; None: the model's token count minus the mask width)."""
        return None

    def set_progress(self, progress: float) -> None:
        """Called before every step with the fraction of the run done (0 … 1): for
        schedules that move during training (EViT's keep-rate warm-up)."""

    def read_schedule(self, images: Iterable[torch.Tensor]) -> MethodConfig:  # pragma: no cover
        """The schedule the deployed static model gets, read off the trained form
        (over ``images``, batches of preprocessed images, where it is learned)."""
        raise NotImplementedError
