"""A-ViT's training-mode forward and losses, on the parameters of edgeprune's static model.

At inference the static model (``AViTStatic``) keeps fixed token counts per block. In
training A-ViT (NVlabs/A-ViT: ``timm/models/act_vision_transformer.py``, the
``VisionTransformer`` with act_mode 4 that ``main_act.py`` builds, and
``engine_act.train_one_epoch``) keeps every token and *masks* the halted ones:

* after every block each token's halting score is h = sigmoid(gate_scale · x[..., 0] −
  gate_center) (forced to 1 at the last block); the scores accumulate (c), and a token
  runs on while c < 1 − 0.01;
* before a block the halted tokens are zeroed, as ``out.data = out.data * mask``: the
  value only, the gradient passes as if unmasked (here ``x + (x·run − x).detach()``);
  inside it their LayerNorm inputs and outputs are zeroed and they get a −1000
  attention bias;
* the output is the ponder-weighted sum of each token's block outputs (h while it runs,
  the remainder ρ = R = 1 − Σh at the block where it halts); the head reads its CLS;
* ponder loss: ``ponder_token_scale`` (5e-4) × mean over images and tokens of
  ρ_token = Σ_blocks running + R at halting;
* distribution prior: ``distr_prior_alpha`` (1e-3) × KLDivLoss(batchmean) of the
  per-block mean halting score — normalised over the blocks, clamped to [0.01, 0.99] —
  to a Gaussian target, added only when positive. As their code: the mean is
  ``h[1:].mean()`` over a B×N score, i.e. over the images *but the first* (not the
  tokens but CLS), and all tokens, the last block's raw score included; with one image
  it is NaN there and never added, here 0. The target is ``get_distribution_target``'s:
  the N(t, 1) density at the block indices 0…depth−1, scaled so that its first
  round(t) entries sum to 0.98.

Target depth from the budget: the budget's MethodConfig (keep ratios at its locations)
gives the static plan's patch tokens per block, so the mean number of blocks a patch
token runs is D = Σ_b patches_b / N (12 dense, 9 for A-ViT's default prior). A token
running D blocks halts at block index D − 1, where the prior centres the halting mass:
t = D − 1 (A-ViT's default t = 8 is D = 9, 75 % of the depth). ``start_config`` records
the budget's ratios as option ``target_keep``; t can also be given (``target_depth``).

Masks for the latency loss, one per location of the plan (B×N patch tokens, CLS is
always kept by the static model): the tokens still running before that block. Forward:
the hard running mask (c < 1 − ε), i.e. the token counts the masked model really runs
and the calibration reads; backward: the gradient of clamp(1 − c, 0, 1), the
not-yet-halted mass (straight-through), the one smooth quantity that says how close a
token is to halting, so the latency loss pushes the halting scores of running tokens up.

The gates are the plan's options (``gate_scale``/``gate_center``: 10/30 tiny, 10/75
small). A-ViT has no parameters of its own: ``selector_parameters()`` is empty and the
halting is learned through the backbone (A-ViT trains the whole network at one lr).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.arch import Arch
from edgeprune.core.methods import MethodConfig
from edgeprune.core.methods.avit import EPS, MASK_BIAS, AViT, halting
from edgeprune.core.methods.avit_calibration import calibrate
from edgeprune.core.models.deit import Block
from edgeprune.training.forms.base import FormOutput, TrainingForm

PONDER_TOKEN_SCALE = 5e-4
DISTR_PRIOR_ALPHA = 1e-3
# get_distribution_target's defaults: std 1, the first round(t) entries sum to 1 − 0.02
DISTR_BUFFER = 0.02
# the options start_config adds and the deployed schedule does not carry
TRAINING_OPTIONS = ("target_keep", "target_depth", "ponder_token_scale", "distr_prior_alpha")


def target_halting_depth(arch: Arch, locs, keep) -> float:
    """The block index t at which a budget's static plan (keep ratios ``keep`` at
    ``locs``) halts its patch tokens on average: D − 1, D = mean blocks run per patch."""
    plan = AViT().token_plan(arch, MethodConfig(tuple(locs), tuple(keep), {}))
    blocks_run = sum(n - 1 for n in plan.attn_tokens) / arch.num_patches
    return min(float(arch.depth - 1), max(0.0, blocks_run - 1.0))


def distribution_target(depth: int, target_depth: float) -> torch.Tensor:
    """A-ViT's ``get_distribution_target(standardized=True)`` at ``target_depth``: the
    N(t, 1) density at 0…depth−1, scaled so its first round(t) (≥ 1) entries sum to 0.98."""
    data = [math.exp(-0.5 * (k - target_depth) ** 2) / math.sqrt(2 * math.pi) for k in range(depth)]
    head = max(1, min(depth, math.floor(target_depth + 0.5)))
    scaling = (1.0 - DISTR_BUFFER) / sum(data[:head])
    return torch.tensor([v * scaling for v in data], dtype=torch.float64).float()


def masked_block(blk: Block, x: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
    """A-ViT's ``Block_ACT.forward_act``: halted tokens (run = 0) zeroed at the
    LayerNorms' inputs and outputs and kept out of attention by a −1000 bias."""
    b, n = run.shape
    keep = run.view(b, n, 1)
    bias = ((1.0 - run) * MASK_BIAS).view(b, 1, 1, n)
    q, k, v = blk.attn.qkv_heads(blk.norm1(x * keep) * keep)
    o, _ = blk.attn.attend(q, k, v, bias)
    x = x + blk.attn.proj(o)
    return x + blk.mlp(blk.norm2(x * keep) * keep)


def running_mask(run: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """The running tokens (hard) with the gradient of the not-yet-halted mass 1 − c."""
    soft = torch.clamp(1.0 - cum, 0.0, 1.0)
    return run + (soft - soft.detach())


class AViTTraining(TrainingForm):
    """The training forward of an ``AViTStatic`` (parameters shared, not copied).

    ``forward(img)`` -> FormOutput: logits, running masks (one B×N per location of the
    plan), aux ``ponder`` and ``distr_prior`` weighted as A-ViT's README trains
    (5e-4, 1e-3; plan options ``ponder_token_scale``/``distr_prior_alpha`` override).
    ``noise`` is ignored: A-ViT's halting is deterministic."""

    method = "avit"
    learns_schedule = True
    distills = False

    def __init__(self, model: nn.Module, target_depth: float | None = None):
        super().__init__(model)
        plan = model.plan
        opts = dict(plan.options)
        self.locs = tuple(plan.prune_locs)
        self.ponder_token_scale = float(opts.get("ponder_token_scale", PONDER_TOKEN_SCALE))
        self.distr_prior_alpha = float(opts.get("distr_prior_alpha", DISTR_PRIOR_ALPHA))
        if target_depth is None:
            target_depth = opts.get("target_depth")
        if target_depth is None:
            keep = opts.get("target_keep", plan.keep_ratios)
            target_depth = target_halting_depth(model.arch, self.locs, keep)
        self.target_depth = float(target_depth)
        target = distribution_target(model.arch.depth, self.target_depth)
        self.register_buffer("distr_target", target, persistent=False)

    @classmethod
    def start_config(cls, target: MethodConfig, num_patches: int = 196) -> MethodConfig:
        """The budget's locations at keep 1.0: for A-ViT keep-all is the static model with
        no selector stage (``token_plan`` drops a stage that keeps every token), i.e. the
        dense pretrained model with its gates, as A-ViT starts; the budget's ratios go
        along as ``target_keep`` (the prior's target depth), the gates as given."""
        opts = {k: v for k, v in target.options.items() if k in ("gate_scale", "gate_center")}
        opts["target_keep"] = tuple(float(r) for r in target.keep_ratios)
        return MethodConfig(tuple(target.prune_locs), tuple(1.0 for _ in target.prune_locs), opts)

    def read_schedule(self, images: Iterable[torch.Tensor], quantile: float = 0.5) -> MethodConfig:
        """The keep ratios at the plan's locations, read off the trained halting by the
        inference form's own calibration (``avit_calibration.calibrate``: running tokens
        of the masked model per block over ``images``, at ``quantile``, rounded up,
        non-increasing): (count − 1) / patches.

        The median image's counts (0.5), not every image's (1.0, ``calibrate``'s own
        default): the latency loss trained the *mean* running count to the aim, and the
        worst image's counts would deploy a model slower than the budget planned (on
        the tests' tiny model, 3.68 ms against a 2.85 ms aim that the training masks
        met); the top-1 after every epoch is the static model's at these counts."""
        imgs = torch.cat([x.detach().float().cpu() for x in images])
        if imgs.shape[0] == 0:
            raise ValueError("no images to read the schedule from")
        m = self.model
        if any(p.device.type != "cpu" for p in m.parameters()):
            m = copy.deepcopy(m).cpu()  # the calibration runs on the CPU
        arch = m.arch
        data = calibrate(m, imgs, arch, m.scale, m.center, quantile)
        counts = data["counts"]
        ratios, prev = [], 1.0
        for b in self.locs:
            r = min(prev, max(1.0 / arch.num_patches, (counts[b] - 1) / arch.num_patches))
            ratios.append(r)
            prev = r
        opts = {k: v for k, v in dict(m.plan.options).items() if k not in TRAINING_OPTIONS}
        opts.update(
            gate_scale=m.scale,
            gate_center=m.center,
            schedule=f"read off the trained halting (calibrated, quantile {quantile})",
        )
        return MethodConfig(self.locs, tuple(ratios), opts)

    def forward(self, img: torch.Tensor, noise: bool = True) -> FormOutput:
        m = self.model
        x = m.embed(img)
        b, n, _ = x.shape
        cum, rem, run = x.new_zeros(b, n), x.new_ones(b, n), x.new_ones(b, n)
        rho = x.new_zeros(b, n)
        out = None
        masks, layer_scores = [], []
        depth = len(m.blocks)
        for i, blk in enumerate(m.blocks):
            if i in self.locs:
                masks.append(running_mask(run, cum)[:, 1:])
            x = x + (x * run.unsqueeze(-1) - x).detach()  # out.data = out.data * mask
            x = masked_block(blk, x, run)
            h = halting(x, m.scale, m.center)
            layer_scores.append(h[1:].mean())  # sic: images 1…B−1, all tokens
            y = x * run.unsqueeze(-1)
            if i == depth - 1:
                h = torch.ones_like(h)
            cum = cum + h
            rho = rho + run
            reached = (cum > 1 - EPS).to(x.dtype) * run
            delta1 = y * rem.unsqueeze(-1) * reached.unsqueeze(-1)
            rho = rho + rem * reached
            not_reached = (cum < 1 - EPS).to(x.dtype)
            rem = rem - not_reached * h
            delta2 = y * h.unsqueeze(-1) * not_reached.unsqueeze(-1)
            out = delta1 + delta2 if out is None else out + (delta1 + delta2)
            run = not_reached
        aux = {
            "ponder": rho.mean() * self.ponder_token_scale,
            "distr_prior": self._distr_prior(layer_scores, b),
        }
        return FormOutput(logits=m.head(m.norm(out)[:, 0]), masks=masks, aux=aux)

    def _distr_prior(self, layer_scores: list[torch.Tensor], batch: int) -> torch.Tensor:
        """engine_act's distributional prior, added only when positive (and 0 for one
        image, where their per-block mean over images 1… is NaN and never added)."""
        if batch < 2 or self.distr_prior_alpha <= 0:
            return layer_scores[0].new_zeros(())
        d = torch.stack(layer_scores)
        d = torch.clamp(d / d.sum(), 0.01, 0.99)
        kl = F.kl_div(d.log(), self.distr_target.to(d.dtype), reduction="batchmean")
        loss = self.distr_prior_alpha * kl
        return torch.where(loss > 0, loss, torch.zeros_like(loss))


FORM = AViTTraining
