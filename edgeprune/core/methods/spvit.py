"""SPViT (Kong, Dong et al., ECCV 2022; PeiyanFlying/SPViT, vit_l2_3keep_senet*.py).

Scoring: ``MultiheadPredictorLG`` per stage. Per head h, the head's channel slice
(C/H channels) goes through its own DynamicViT-style scorer: ``in_conv.{h}`` =
LayerNorm(d), Linear(d, d), GELU; the first d/2 channels stay per token, the last d/2
are averaged over the live tokens; ``out_conv.{h}`` = Linear d->d/2, GELU, d/2->d/4,
GELU, d/4->2, then LogSoftmax. The H log-probabilities are mixed per token with
SE-style head weights ``senet`` = Linear(H, H//2), GELU, Linear(H//2, H), Sigmoid on
the per-head channel means (AdaptiveAvgPool2d((N, H)) in the original), divided by
the sum of the weights. Channel 0 is "keep". (The released class lists one
in_conv/out_conv module H times, so its checkpoints hold H equal copies; loaded per
head here, which also takes untied heads.)
Keeping: at each stage ``int(196 * rho_s)`` patch tokens, rho cumulative of the 196
patches as in DynamicViT (the ratio loss compares the mean keep decision over all
196 patches); default [0.617, 0.369, 0.137] at blocks [3, 6, 9]. Package tokens of
earlier stages are always kept and are scored (they enter the global mean) but never
dropped.
The rest: one package token per stage, appended at the end; it stays in the
sequence to the head. As in the released model (vit_l2_3keep_senet.py, the file the
training script and infer.py use): package = sum_i p_i x_i over the tokens dropped at
that stage, *not* divided by sum_i p_i (the division is commented out there; only the
older vit_l2.py / vit_l2_3keep.py divide), with p_i the selector's second output: the
head-weight-averaged per-head softmax keep probability (channel 0), not the softmax of
the mixed log-scores. The ranking uses the mixed log-scores (what the released model
samples its Gumbel decision from). Golden outputs of the released class:
tests/golden/spvit.

Static rewrite: the published inference samples Gumbel noise at eval and keeps a
per-image number of tokens (batch 1 only); here top-k with a constant k by keep
probability softmax(mixed)[0], for any batch size, deterministic. The graph ranks by
its logit Σ_h w_h z_h / Σ_h w_h (z_h = out_conv.{h}.4's keep − drop logit, one folded
column), the same order, and takes the package weights as Σ_h w_h sigmoid(z_h) / Σ_h w_h
(``MultiheadPredictor.keep_scores``): per stage one batched scorer for all heads, the
SE head weights on a B×H×N layout, TopK, one ScatterElements zeroing the kept tokens'
weights, one MatMul for the package token, one GatherND and one Concat.
In the XNNPACK form (``tokenops.xnnpack_form``, the ExecuTorch lowering) the per-head
channel means are taken once for the SE weights and the LayerNorm, and the token mean
of in_conv's output is a MatMul of a constant 1/N row (a mean there is a transpose and
a pool): 9, 7 and 5 µs less for DeiT-T's three selectors. When the heads are tied,
as in every released checkpoint (``heads_tied``; a built-in spec ties them too), the
XNNPACK form runs the predictor token-major: the tokens viewed as (token, head) rows,
each Linear one fully-connected layer with its bias, no heads-first transpose
(``_token_major_scores``): DeiT-T's first selector alone 84 → 73 µs, the whole model
~0.8 % faster (in-process A/Bs). Untied heads keep the batched per-head form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.core.arch import Arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.base import (
    MethodConfig,
    PredictorMethod,
    StaticTopKViT,
    geometric,
)
from edgeprune.core.methods.tokenops import (
    constant,
    in_xnnpack_form,
    matmul,
    select_top,
    weighted_rest,
)
from edgeprune.core.plan import SelectorStage, TokenPlan


class MultiheadPredictor(nn.Module):
    """SPViT's multi-head token selector; parameter names as in the published files."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        h, d = num_heads, embed_dim // num_heads
        self.num_heads, self.head_dim = h, d
        self.senet = nn.Sequential(
            nn.Linear(h, h // 2), nn.GELU(), nn.Linear(h // 2, h), nn.Sigmoid()
        )
        self.in_conv = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()) for _ in range(h)
        )
        self.out_conv = nn.ModuleList(
            nn.Sequential(
                nn.Linear(d, d // 2),
                nn.GELU(),
                nn.Linear(d // 2, d // 4),
                nn.GELU(),
                nn.Linear(d // 4, 2),
            )
            for _ in range(h)
        )
        self._tied, self._tied_for = False, None  # heads_tied(), and the weights it read

    def heads_tied(self) -> bool:
        """Whether every head's in_conv and out_conv hold the same weights. They do in
        every checkpoint of the released class, which lists one module H times. Read from
        the weights again whenever one has been replaced or changed in place (loading,
        training); inside ``torch.export``, where weights have no values, the answer of
        the last read, which ``prepare_trace`` makes just before (the ExecuTorch lowering
        calls it, through ``tokenops.prepare_trace``)."""
        if torch.compiler.is_exporting():
            return self._tied
        heads = [
            [*self.in_conv[i].parameters(), *self.out_conv[i].parameters()]
            for i in range(self.num_heads)
        ]
        state = tuple((id(p), p._version) for ps in heads for p in ps)
        if state != self._tied_for:
            self._tied = all(
                torch.equal(a, b) for ps in heads[1:] for a, b in zip(heads[0], ps, strict=True)
            )
            self._tied_for = state
        return self._tied

    def prepare_trace(self) -> None:
        """Read ``heads_tied`` from the weights now, before a trace that cannot."""
        self.heads_tied()

    @torch.no_grad()
    def tie_heads_(self) -> MultiheadPredictor:
        """Head 0's in_conv and out_conv copied into the others: the released layout."""
        for modules in (self.in_conv, self.out_conv):
            for i in range(1, self.num_heads):
                modules[i].load_state_dict(modules[0].state_dict())
        return self

    def forward(
        self, x: torch.Tensor, policy: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B×N×C tokens to score; policy: B×N×1 live mask (None: all live).
        Returns, as the published selector: B×N×2, the head-weighted mean of the per-head
        log-probabilities (the ranking score), and B×N, the head-weighted mean of the
        per-head keep probabilities (softmax channel 0, the package-token weights).
        The static graph uses ``keep_scores`` (same ranking, fewer ops)."""
        xt = self._heads_first(x)
        weights = self._head_weights(xt)  # B×H×N
        *_, w4, b4 = self._out_params()
        s = torch.log_softmax(self._hidden(xt, policy) @ w4 + b4, dim=-1)  # B×H×N×2
        wsum = weights.sum(dim=1)  # B×N
        mixed = (s * weights.unsqueeze(-1)).sum(dim=1) / wsum.unsqueeze(-1)  # B×N×2
        soft = (torch.exp(s[..., 0]) * weights).sum(dim=1) / wsum  # B×N
        return mixed, soft

    def keep_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B×N×C, all live -> (key, soft), both B×N. ``soft`` is ``forward``'s
        second output; ``key`` ranks the tokens as softmax(mixed)[..., 0] does.

        With two classes, softmax(mixed)[0] = sigmoid(mixed_0 − mixed_1), and a
        log-softmax difference is the logit difference z_h = u_h0 − u_h1, so
        mixed_0 − mixed_1 = Σ_h w_h z_h / Σ_h w_h: that is ``key`` (sigmoid is
        monotone, so the top-k set is the same except at exact float ties, where
        either order is a correct top-k). z_h is one output column of out_conv.{h}.4
        (W_0 − W_1, b_0 − b_1), and exp(log_softmax(u_h))_0 = sigmoid(z_h), so
        ``soft`` = Σ_h w_h sigmoid(z_h) / Σ_h w_h: no LogSoftmax, Exp, Softmax or
        2-wide products."""
        if in_xnnpack_form() and self.heads_tied():
            return self._token_major_scores(x)
        xt = self._heads_first(x)
        # XNNPACK form: the per-head channel means once, for the SE head weights and the
        # LayerNorm (each mean is a transpose and a pool there, ~6 µs at 196 tokens);
        # other forms: the LayerNorm as one op (ONNX LayerNormalization)
        mu = xt.mean(dim=-1, keepdim=True) if in_xnnpack_form() else None
        wn = self._head_weights(xt, mu)
        wn = wn / wn.sum(dim=1, keepdim=True)  # B×H×N, normalised over heads
        w4, b4 = self._logit_difference()
        z = (self._hidden(xt, mu=mu) @ w4 + b4).squeeze(-1)  # B×H×N
        key = (wn * z).sum(dim=1)
        soft = (wn * torch.sigmoid(z)).sum(dim=1)
        return key, soft

    def _token_major_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``keep_scores`` when the heads are tied (``heads_tied``), XNNPACK form: the
        rows of x viewed as (token, head) pairs, B×N·H×d, so no heads-first transpose;
        every Linear one fully-connected layer with its bias (weights packed once, where
        a batched MatMul packs per run and adds its bias apart); the SE head weights a
        Linear over the last axis; sums over the heads a MatMul of a constant ones
        column. Same function as the batched per-head form (tests compare them)."""
        b, n, _ = x.shape
        h, d, half = self.num_heads, self.head_dim, self.head_dim // 2
        xr = x.reshape(b, n * h, d)
        mu = xr.mean(dim=-1, keepdim=True)  # per-(token, head) channel means, once
        w = self.senet(mu.reshape(b, n, h))  # B×N×H: SE head weights
        t = _layer_norm_steps(xr, mu, self.in_conv[0][0].eps)  # affine folded below
        w_in, b_in = _folded_in(self.in_conv[0])
        t = F.gelu(F.linear(t, w_in.t(), b_in))  # B×N·H×d
        # the global half: per-head means over the tokens, one MatMul of a 1/N row
        glob = matmul(constant(_mean_row, n, like=t), t.reshape(b, n, h * d)).reshape(b, h, d)
        fc0, fc2, fc4 = (self.out_conv[0][i] for i in (0, 2, 4))
        g = F.linear(glob[..., half:], fc0.weight[:, half:], fc0.bias)  # B×H×d/2
        u = F.linear(t[..., :half], fc0.weight[:, :half]).reshape(b, n, h, half)
        u = F.gelu(u + g.reshape(b, 1, h, half)).reshape(b, n * h, half)
        u = F.gelu(fc2(u))
        # out_conv.4 folded to the keep − drop logit column
        z = F.linear(u, *_keep_minus_drop(fc4)).reshape(b, n, h)
        ones = constant(_ones_column, h, like=x)
        wsum = matmul(w, ones)  # B×N×1
        key = matmul(w * z, ones) / wsum
        soft = matmul(w * torch.sigmoid(z), ones) / wsum
        return key.reshape(b, n), soft.reshape(b, n)

    def _heads_first(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # B×H×N×d

    def _head_weights(self, xt: torch.Tensor, mu: torch.Tensor | None = None) -> torch.Tensor:
        """B×H×N×d -> the SE head weights, B×H×N. The senet Linear layers act on the head
        axis: their weights multiply from the left (H/2×H, H×H/2), so the B×H×N layout
        needs no transpose and no flattening to 2-D. ``mu``: the per-head channel means
        (B×H×N×1), when already computed."""
        fc1, fc2 = self.senet[0], self.senet[2]
        m = xt.mean(dim=-1) if mu is None else mu.squeeze(-1)  # B×H×N: per-head channel means
        m = torch.nn.functional.gelu(fc1.weight @ m + fc1.bias.unsqueeze(-1))
        return torch.sigmoid(fc2.weight @ m + fc2.bias.unsqueeze(-1))

    def _hidden(
        self,
        xt: torch.Tensor,
        policy: torch.Tensor | None = None,
        mu: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """B×H×N×d -> out_conv.{h}.3's output, B×H×N×d/4, all heads at once.

        The per-head Linear layers run as one batched MatMul over B×H×N×d (weights
        stacked H×d×d'); the per-head LayerNorm affine is folded into the Linear after
        it; out_conv.{h}.0 takes the global half as one row per head (local·W_localᵀ +
        global·W_globalᵀ + b) instead of an N-row broadcast, and that row is the
        token mean of in_conv's whole output times W_global padded with zero rows for
        the local half (no slice for the global half). Same function as one scorer per
        head (tests compare the two). ``mu``: the per-head channel means (B×H×N×1) for
        the LayerNorm, which then runs as its steps (XNNPACK form)."""
        d = self.head_dim
        ln = self.in_conv[0][0]
        if mu is None:
            t = torch.nn.functional.layer_norm(xt, (d,), eps=ln.eps)
        else:  # the steps the ExecuTorch lowering takes LayerNorm apart into
            t = _layer_norm_steps(xt, mu, ln.eps)
        t = torch.nn.functional.gelu(t @ self._in_weight() + self._in_bias())
        if policy is None and in_xnnpack_form():
            # the token mean as one bmm of a constant 1/N row (XNNPACK takes a mean over
            # the tokens as a transpose, a copy and a pool: ~2 µs more at 196 tokens)
            b, h, n, _ = t.shape
            glob = matmul(constant(_mean_row, n, like=t), t.reshape(b * h, n, d))
            glob = glob.reshape(b, h, 1, d)
        elif policy is None:
            glob = t.mean(dim=2, keepdim=True)  # B×H×1×d
        else:
            pol = policy.unsqueeze(1)  # B×1×N×1
            glob = (t * pol).sum(dim=2, keepdim=True) / pol.sum(dim=2, keepdim=True)
        w0, b0, w2, b2, _, _ = self._out_params()
        w0_glob = torch.nn.functional.pad(w0[:, d // 2 :], (0, 0, d // 2, 0))  # H×d×d/2
        u = torch.nn.functional.gelu(t[..., : d // 2] @ w0[:, : d // 2] + (glob @ w0_glob + b0))
        return torch.nn.functional.gelu(u @ w2 + b2)

    def _in_weight(self) -> torch.Tensor:
        """H×d×d: in_conv.{h}.1 transposed, LayerNorm weight folded in."""
        return torch.stack([_folded_in(seq)[0] for seq in self.in_conv])

    def _in_bias(self) -> torch.Tensor:
        """H×1×d: in_conv.{h}.1 bias plus the LayerNorm bias through the Linear."""
        return torch.stack([_folded_in(seq)[1].unsqueeze(0) for seq in self.in_conv])

    def _out_params(self) -> tuple[torch.Tensor, ...]:
        """out_conv.{h}.{0,2,4} stacked over heads: weights H×in×out, biases H×1×out."""
        out = []
        for i in (0, 2, 4):
            out.append(torch.stack([seq[i].weight.t() for seq in self.out_conv]))
            out.append(torch.stack([seq[i].bias.unsqueeze(0) for seq in self.out_conv]))
        return tuple(out)

    def _logit_difference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """out_conv.{h}.4 folded to one column, keep − drop: weights H×d/4×1, biases
        H×1×1."""
        folded = [_keep_minus_drop(seq[4]) for seq in self.out_conv]
        return torch.stack([w.t() for w, _ in folded]), torch.stack(
            [b.view(1, 1) for _, b in folded]
        )


def _layer_norm_steps(x: torch.Tensor, mu: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim without affine, from the means ``mu`` already taken:
    the steps the ExecuTorch lowering takes a LayerNorm apart into."""
    xc = x - mu
    return xc * torch.rsqrt((xc * xc).mean(dim=-1, keepdim=True) + eps)


def _keep_minus_drop(fc: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """out_conv.{h}.4 (d/4 -> 2) folded to its keep − drop logit: weight 1×d/4, bias 1."""
    return fc.weight[:1] - fc.weight[1:], fc.bias[:1] - fc.bias[1:]


def _folded_in(seq: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """in_conv.{h} = LayerNorm, Linear: the Linear's weight transposed (d×d, in×out)
    with the LayerNorm weight folded in, and its bias plus the LayerNorm bias through it."""
    ln, lin = seq[0], seq[1]
    return ln.weight.unsqueeze(-1) * lin.weight.t(), lin.bias + ln.bias @ lin.weight.t()


def _mean_row(n: int) -> torch.Tensor:
    return torch.full((1, n), 1.0 / n)


def _ones_column(h: int) -> torch.Tensor:
    return torch.ones(h, 1)


def multihead_predictor_macs(c: int, h: int, n: int) -> int:
    """Multiply-adds of ``MultiheadPredictor.keep_scores`` on n tokens (LayerNorm 5,
    GELU 8 and sigmoid 4 operations per element, as in DynamicViT's calc_flops):
    out_conv.{h}.4 folded to one logit-difference column, one sigmoid of it per head,
    and the head mixing (normalised weights times key and keep probability)."""
    d = c // h
    per_head = n * (d * d + d * (d // 2) + (d // 2) * (d // 4) + d // 4)
    per_head += n * (5 * d + 8 * d + 8 * (d // 2) + 8 * (d // 4) + 4) + n * d
    senet = n * (c + h * (h // 2) * 2 + 8 * (h // 2) + 4 * h)
    return h * per_head + senet + n * 4 * h


class SPViTStatic(StaticTopKViT):
    def __init__(self, arch: Arch, plan: TokenPlan):
        super().__init__(arch, plan)
        self.score_predictor = nn.ModuleList(
            MultiheadPredictor(arch.embed_dim, arch.num_heads) for _ in plan.selectors
        )

    def init_random(self, seed: int = 0) -> SPViTStatic:
        """Seeded random weights in the released layout: each predictor's heads tied
        (its checkpoints hold H equal copies of one in_conv/out_conv)."""
        super().init_random(seed)
        for predictor in self.score_predictor:
            predictor.tie_heads_()
        return self

    def patches_kept(self, stage: SelectorStage) -> int:
        # tokens_out = CLS + kept patches + one package token per stage so far
        return stage.tokens_out - 1 - (self.plan.selectors.index(stage) + 1)

    def select(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        cls, rest = x[:, :1], x[:, 1:]
        key, soft = self.score_predictor[stage].keep_scores(rest)  # B×N each
        patches, packs = rest, []
        if stage:  # earlier package tokens sit at the end: scored, never dropped
            n_patch = rest.shape[1] - stage
            key, soft = key[..., :n_patch], soft[..., :n_patch]
            patches, packs = rest[:, :n_patch], [rest[:, n_patch:]]
        sel = select_top(key, self.keep_counts[stage])
        # package token: Σ soft_i·x_i over the dropped patches, not divided by Σ soft_i,
        # as released
        package = weighted_rest(patches, soft, sel, normalise=False)  # B×1×C
        return torch.cat([cls, sel.rows(patches), *packs, package], dim=1)


class SPViT(PredictorMethod):
    # @r scales the default schedule: deit_tiny:spvit@0.7 -> 0.7, 0.49, 0.343
    name = "spvit"
    default_keep = (0.617, 0.369, 0.137)
    static_model = SPViTStatic
    ratio_name = "SPViT base keep ratio"

    def matches(self, keys: Sequence[str]) -> bool:
        return any(k.startswith("score_predictor.") and ".senet." in k for k in keys)

    def token_plan(self, arch: Arch, cfg: MethodConfig) -> TokenPlan:
        locs = dict(zip(cfg.prune_locs, cfg.keep_ratios, strict=True))
        attn, stages, n, packs = [], [], arch.num_tokens, 0
        for b in range(arch.depth):
            if b in locs:
                kept = self.kept_patches(arch, locs[b], b)
                if kept >= n - 1 - packs:
                    raise EdgepruneError(
                        f"keep ratio {locs[b]} drops no token at block {b}",
                        "SPViT's package token needs at least one dropped token per stage",
                    )
                packs += 1
                stages.append(SelectorStage(b, "pre", n, 1 + kept + packs))
                n = 1 + kept + packs
            attn.append(n)
        return self.make_plan(arch, cfg, attn, attn, stages)

    def selector_module(self, arch: Arch, stage: SelectorStage) -> nn.Module:
        # tokens_in = 1 + patches + s packages, tokens_out = 1 + kept + s + 1
        s = self._stage_index(arch, stage)
        earlier = [
            SelectorStage(-1 - i, "pre", stage.tokens_in, stage.tokens_out) for i in range(s)
        ]
        return self.stage_alone(arch, [*earlier, stage])

    def _stage_index(self, arch: Arch, stage: SelectorStage) -> int:
        # package tokens coming in: 0 at the first stage (full sequence); later, one per
        # earlier stage. The counts alone do not say how many, so take the default
        # schedule's; the cost of a stage barely depends on it (they pass through)
        if stage.tokens_in == arch.num_tokens:
            return 0
        s = sum(1 for loc in self.default_locs if loc < stage.block)
        return max(1, min(s, stage.tokens_out - 3))

    def selector_macs(self, arch: Arch, plan: TokenPlan) -> list[int]:
        c, h = arch.embed_dim, arch.num_heads
        # scoring of every non-CLS token; the package token: one weighted sum
        return [
            multihead_predictor_macs(c, h, s.tokens_in - 1) + (s.tokens_in - 1) * (c + 1)
            for s in plan.selectors
        ]

    def config_from_checkpoint(
        self, state_dict: Mapping[str, torch.Tensor], arch: Arch, path: Path | None
    ) -> MethodConfig:
        n, locs = self.predictor_stages(state_dict)
        heads = {
            int(k.split(".")[3])
            for k in state_dict
            if k.startswith("score_predictor.0.in_conv.") and k.endswith(".1.weight")
        }
        if heads and len(heads) != arch.num_heads:
            raise EdgepruneError(
                f"SPViT selector has {len(heads)} heads but the model {arch.num_heads}",
                "pass --heads to match the checkpoint",
            )
        keep = self.default_keep if n == 3 else geometric(0.7, n)
        return MethodConfig(locs, keep)
