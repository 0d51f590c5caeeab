"""ToMe's training-mode forward, on the parameters of edgeprune's static model.

ToMe (facebookresearch/ToMe) ships no training code: one trains the model it patches
(``tome.patch.timm``) with that model's own recipe, merging on. In training the patched
model does what it does at inference, with gradients:

* the matching (cosine similarity of the keys averaged over heads, alternating sets,
  CLS protected, the r best-matched A tokens) runs under ``torch.no_grad()``
  (``merge.bipartite_soft_matching``): no gradient reaches the keys through it (they
  get theirs through attention); here the metric is detached, the same thing;
* the merge itself (``merge_wavg``: size-weighted sums, divided by the summed sizes)
  is differentiable in the tokens; the sizes carry no gradient (they count tokens);
* proportional attention (log size added to the attention logits) follows the
  ``prop_attn`` switch of ``apply_patch``. Its docstring asks for it off in training,
  yet the README says ToMe's own DeiT checkpoints were trained, and are evaluated,
  with it on. On by default here: the deployed static model always attends
  proportionally, and training as it runs is what fine-tuning is for;
* ``trace_source`` only records which inputs went into each token (visualisation):
  nothing here.

The per-block merge counts are the static model's plan (the budget's r schedule, or
``--tome-r``), clamped as ToMe clamps them. The merge is edgeprune's static
``bipartite_merge`` / ``merge_scored`` (index form), differentiable in x as used here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from edgeprune.core.methods import MethodConfig
from edgeprune.core.methods.tome import bipartite_merge, head_sum
from edgeprune.training.forms.base import FormOutput, TrainingForm


class ToMeTraining(TrainingForm):
    """The training forward of a ``ToMeStatic`` (parameters shared, not copied)."""

    method = "tome"
    learns_schedule = False
    distills = False

    def __init__(self, model: nn.Module, prop_attn: bool = True):
        super().__init__(model)
        self.prop_attn = prop_attn

    def read_schedule(self, images: Iterable[torch.Tensor] = ()) -> MethodConfig:
        """The schedule the static model was built at (the budget's r): nothing is
        learned, nothing is read off the images."""
        plan = self.model.plan
        return MethodConfig(tuple(plan.prune_locs), tuple(plan.keep_ratios), dict(plan.options))

    def forward(self, img: torch.Tensor, noise: bool = True) -> FormOutput:
        """Logits with r tokens merged per block as planned (ToMe samples nothing:
        ``noise`` is not used); no masks (the schedule is fixed), no terms of its own."""
        m = self.model
        x = m.embed(img)
        size = None
        for blk, r in zip(m.blocks, m.r_per_block, strict=True):
            bias = None
            if self.prop_attn and size is not None:
                bias = size.log().reshape(size.shape[0], 1, 1, -1)
            q, k, v = blk.attn.qkv_heads(blk.norm1(x))
            out, _ = blk.attn.attend(q, k, v, bias)
            x = x + blk.attn.proj(out)
            if r > 0:
                # the matching as ToMe's: no gradient through the metric; the sizes
                # count tokens and carry none either
                x, size = bipartite_merge(x, size, head_sum(k).detach(), r)
                size = size.detach()
            x = x + blk.mlp(blk.norm2(x))
        return FormOutput(logits=m.classify(x))


FORM = ToMeTraining
