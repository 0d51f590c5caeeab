"""A-ViT (Yin et al., CVPR 2022; NVlabs/A-ViT, timm/models/act_vision_transformer.py).

No parameters of its own (plain timm keys). Halting score per token after each block:
sigmoid(gate_scale * x[..., 0] - gate_center) (act_mode 4); the scores accumulate,
and a token halts once its cumulative score exceeds 1 - eps (eps = 0.01); at the last
block every remaining token halts (score forced to 1). The released model only
masks: before every block halted tokens are zeroed, inside it their LayerNorm
inputs and outputs are zeroed and they get a -1000 attention bias. The output is
not the last block's: every token keeps a ponder-weighted sum of its block outputs
(weight h while running, the remainder R = 1 - sum h at the block where it halts),
and the head reads the CLS entry of that sum.

The masked reference and the calibration that fixes the counts are in
``avit_calibration.py``.

Static rewrite ("token zipping", promised by the paper, never released): fixed token
counts per block, calibrated on images with the masked model (``edgeprune
calibrate``); before a block whose count drops, keep CLS and the patch tokens with
the lowest cumulative halting score (the ones the masked model would still run).
CLS is always kept (so the others can still attend to it after it would have
halted); its output is the same ponder-weighted sum as in the released model.

Numerics of the static graph: the ranking key is the *logarithm* of the cumulative
score, log sum_b sigmoid(z_b), kept as a running log-add-exp of log-sigmoids, built
from Exp/Log/Abs/Min/Max only. Ranking by it is the same order as ranking by the
plain sum, but it does not saturate: with untrained gates (z ~ -30..-100) the plain
sum is ~1e-9..1e-40 and onnxruntime's Sigmoid (MLAS) returns 0 below z ~ -18 and has
~1e-7 absolute error above, so the ranks of most tokens were ties or noise and
torch/ORT kept different tokens. The CLS ponder weight is exp(log-sigmoid) for the
same reason. Keys can still be bit-equal when gates saturate the other way (z ≳ 17: log sigmoid(z)
rounds to 0), and torch.topk and ONNX TopK break such ties differently; the selection
therefore ranks by position in the (key, token index) order, which has no ties
(``lowest``).
The CLS halting threshold (c0 > 1 - eps) stays: it is A-ViT's semantics, and with an
accurately computed c0 the runtimes disagree only if c0 is within ~1e-7 of 1 - eps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.base import Method, MethodConfig
from edgeprune.core.methods.tokenops import Selection, select_top, step
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.core.plan import SelectorStage, TokenPlan

EPS = 0.01
MASK_BIAS = -1000.0
CALIBRATION_FORMAT = "edgeprune-avit-calibration"
# released defaults (README / file names tiny-10-30.pth); base is not released: small's
GATES = {"deit_tiny": (10.0, 30.0), "deit_small": (10.0, 75.0), "deit_base": (10.0, 75.0)}
GATE_RE = re.compile(r"(?:^|[-_])(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)$")
# the released checkpoints' own names, [model]-[scale]-[center].pth: enough to detect A-ViT
RELEASED_NAME_RE = re.compile(
    r"(?:^|[-_])(?:tiny|small|base)-(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)$", re.IGNORECASE
)
# used when no calibration is given: a placeholder, said so in the options
PLACEHOLDER_LOCS = (2, 4, 6, 8, 10)
PLACEHOLDER_KEEP = (0.9, 0.75, 0.6, 0.45, 0.3)


def halting(x: torch.Tensor, scale: float, center: float) -> torch.Tensor:
    return torch.sigmoid(x[..., 0] * scale - center)


def _log1p_exp_neg_abs(d: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(-|d|)), in [0, log 2]: no overflow, exports as Abs/Neg/Exp/Add/Log
    (onnxruntime's Exp and Log are accurate to ~1e-7 relative, its Sigmoid is not)."""
    return torch.log(1.0 + torch.exp(-d.abs()))


def log_halting(x: torch.Tensor, scale: float, center: float) -> torch.Tensor:
    """log sigmoid(scale * x[..., 0] - center), without saturating for very negative
    logits (log sigmoid(z) = min(z, 0) - log(1 + exp(-|z|)))."""
    z = x[..., 0] * scale - center
    return torch.clamp(z, max=0.0) - _log1p_exp_neg_abs(z)


def log_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(exp(a) + exp(b)), stable."""
    return torch.maximum(a, b) + _log1p_exp_neg_abs(a - b)


def lowest(key: torch.Tensor, k: int) -> Selection:
    """The ``k`` tokens with the smallest keys (B×N), smallest first; equal keys in token
    order. Ranks by each token's position in that order (distinct integers), so torch,
    onnxruntime and ExecuTorch keep the same tokens even when keys are bit-equal
    (saturated halting scores: for z ≳ 17 log sigmoid(z) rounds to 0 in float32, and
    torch.topk and ONNX TopK break ties differently)."""
    return select_top(key, k, largest=False, exact_ties=True)


class AViTStatic(VisionTransformer):
    def __init__(self, arch: Arch, plan: TokenPlan, scale: float, center: float):
        super().__init__(arch)
        self.plan = plan
        self.scale, self.center = float(scale), float(center)
        self.keep_at = {s.block: s.tokens_out - 1 for s in plan.selectors}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img)
        # log of the cumulative halting score per patch token (the ranking key); set
        # after block 0 (no selector sits before it)
        lc = None
        # CLS: ponder-weighted output, as in the released model. The accumulators start
        # as Python numbers, not zeros_like/ones_like tensors: those are ops of their own
        # (ExecuTorch's full_like, outside XNNPACK, one delegate cut each)
        c0: torch.Tensor | float = 0.0
        rem: torch.Tensor | float = 1.0
        run: torch.Tensor | float = 1.0
        out: torch.Tensor | None = None
        depth = len(self.blocks)
        last_sel = max(self.keep_at, default=-1)
        for i, blk in enumerate(self.blocks):
            keep = self.keep_at.get(i)
            if keep is not None:
                # keep the tokens with the lowest cumulative halting score
                sel = lowest(lc, keep)
                x = torch.cat([x[:, :1], sel.rows(x[:, 1:])], dim=1)
                lc = sel.values(lc)
            x = blk(x)
            h0: torch.Tensor | float
            if i == depth - 1:
                h0 = 1.0 if isinstance(c0, torch.Tensor) else torch.ones_like(x[:, 0, :1])
            elif i < last_sel:  # the patch scores are needed by a later selector
                lh = log_halting(x, self.scale, self.center)
                lc = lh[:, 1:] if lc is None else log_add(lc, lh[:, 1:])
                h0 = torch.exp(lh[:, :1])
            else:
                h0 = torch.exp(log_halting(x[:, :1], self.scale, self.center))
            c0 = c0 + h0
            # c0 > 1 - EPS and c0 < 1 - EPS, as steps (see tokenops.step)
            reached = step(c0 - (1 - EPS)) * run
            not_reached = step((1 - EPS) - c0)
            term = x[:, 0] * run * (rem * reached + h0 * not_reached)
            out = term if out is None else out + term
            rem = rem - not_reached * h0
            run = not_reached
        return self.head(self.norm(out))


def load_calibration(path: str | Path, arch: Arch) -> dict:
    p = Path(path)
    if not p.is_file():
        raise EdgepruneError(
            f"calibration file {p} does not exist", "run: edgeprune calibrate SRC --out FILE"
        )
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = " ".join(str(e).split())[:120]
        raise EdgepruneError(f"calibration file {p} is not valid JSON ({msg})") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise EdgepruneError(
            f"{p} is not an A-ViT calibration file", f"expected 'format': '{CALIBRATION_FORMAT}'"
        )
    counts = data.get("counts")
    if (
        not isinstance(counts, list)
        or len(counts) != arch.depth
        or not all(isinstance(k, int) and 2 <= k <= arch.num_tokens for k in counts)
        or any(b > a for a, b in zip(counts, counts[1:], strict=False))
        or counts[0] != arch.num_tokens
    ):
        raise EdgepruneError(
            f"calibration file {p} has bad 'counts' {counts}",
            f"expected {arch.depth} non-increasing token counts from {arch.num_tokens} down to ≥ 2",
        )
    if data.get("arch") != arch.name:
        raise EdgepruneError(f"calibration file {p} is for {data.get('arch')}, not {arch.name}")
    return data


def schedule_from_counts(counts: list[int], n_patches: int) -> tuple[tuple, tuple]:
    locs, ratios = [], []
    for b in range(1, len(counts)):
        if counts[b] < counts[b - 1]:
            locs.append(b)
            ratios.append((counts[b] - 1) / n_patches)
    return tuple(locs), tuple(ratios)


def gates_from_name(path: Path | None) -> tuple[float, float] | None:
    m = GATE_RE.search(path.stem) if path is not None else None
    return (float(m.group(1)), float(m.group(2))) if m else None


def released_name_gates(path: Path | None) -> tuple[float, float] | None:
    """Gates from a file named as the released A-ViT checkpoints (tiny-10-30.pth), else
    None. Such a file holds plain DeiT keys; its name is what says it is A-ViT."""
    m = RELEASED_NAME_RE.search(path.stem) if path is not None else None
    return (float(m.group(1)), float(m.group(2))) if m else None


class AViT(Method):
    name = "avit"
    user_options = frozenset({"calibration", "gate_scale", "gate_center"})
    default_locs = PLACEHOLDER_LOCS
    default_keep = PLACEHOLDER_KEEP
    cumulative = True

    def default_config(self, arch: Arch) -> MethodConfig:
        scale, center = GATES.get(arch.name, (10.0, 75.0))
        opts = {"gate_scale": scale, "gate_center": center, "schedule": "placeholder"}
        return MethodConfig(self.default_locs, self.default_keep, opts)

    def config_from_checkpoint(
        self, state_dict: Mapping[str, torch.Tensor], arch: Arch, path: Path | None
    ) -> MethodConfig:
        cfg = self.default_config(arch)
        g = gates_from_name(path)
        if g is not None:
            cfg.options["gate_scale"], cfg.options["gate_center"] = g
        return cfg

    def with_overrides(self, cfg, arch, keep=None, locs=None) -> MethodConfig:
        opts = dict(cfg.options)
        calib = opts.get("calibration")
        if calib is not None:
            if keep is not None or locs is not None:
                raise EdgepruneError(
                    "--calibration sets the A-ViT schedule",
                    "drop --keep/--locs, or drop --calibration",
                )
            data = load_calibration(str(calib), arch)
            opts.update(
                calibration=str(calib),
                gate_scale=float(data["gate_scale"]),
                gate_center=float(data["gate_center"]),
                schedule=f"calibrated (quantile {data.get('quantile')})",
            )
            locs_t, keep_t = schedule_from_counts(data["counts"], arch.num_patches)
            out = MethodConfig(locs_t, keep_t, opts)
            self.validate(out, arch)
            return out
        if keep is not None or locs is not None:
            opts["schedule"] = "given"
        return super().with_overrides(
            MethodConfig(cfg.prune_locs, cfg.keep_ratios, opts), arch, keep, locs
        )

    def token_plan(self, arch: Arch, cfg: MethodConfig) -> TokenPlan:
        n0 = arch.num_patches
        locs = dict(zip(cfg.prune_locs, cfg.keep_ratios, strict=True))
        attn, stages, n = [], [], arch.num_tokens
        for b in range(arch.depth):
            if b in locs:
                kept = max(1, round(n0 * locs[b]))
                if kept < n - 1:
                    stages.append(SelectorStage(b, "pre", n, kept + 1))
                    n = kept + 1
            attn.append(n)
        return self.make_plan(arch, cfg, attn, attn, stages)

    def build(self, arch: Arch, plan: TokenPlan) -> AViTStatic:
        o = dict(plan.options)
        default = GATES.get(arch.name, (10.0, 75.0))
        return AViTStatic(
            arch, plan, o.get("gate_scale", default[0]), o.get("gate_center", default[1])
        )

    def selector_module(self, arch: Arch, stage: SelectorStage) -> nn.Module:
        return _AViTSelector(stage.tokens_out - 1)

    def selector_macs(self, arch: Arch, plan: TokenPlan) -> list[int]:
        # the log cumulative halting score is updated after every block before the
        # last stage: log-sigmoid (scale, sub, min, abs, neg, exp, add, log, sub) and
        # log-add (max, sub, abs, neg, exp, add, log, add), 17 ops per token; counted at
        # the stages where tokens are dropped
        per_block = [17 * n for n in plan.attn_tokens]
        out, last = [], 0
        for s in plan.selectors:
            out.append(sum(per_block[last : s.block]))
            last = s.block
        return out

    def report(self, cfg: MethodConfig) -> dict | None:
        calib = cfg.options.get("calibration")
        if calib is None:
            return None
        data = json.loads(Path(str(calib)).read_text())
        return {"calibration": str(calib), **data.get("report", {})}


class _AViTSelector(nn.Module):
    """One zipping stage alone: one update of the log cumulative halting score, then
    keep CLS and the tokens with the lowest (the input's channel 1 stands in for the
    score accumulated so far)."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one block's update of the log cumulative score (channel 1 stands in for it)
        lc = log_add(x[:, 1:, 1], log_halting(x[:, 1:], 10.0, 30.0))
        return torch.cat([x[:, :1], lowest(lc, self.keep).rows(x[:, 1:])], dim=1)
