"""A ViT and the token selectors written out from the papers, for reference tests.

Plain torch arithmetic on a state dict in timm's parameter names (the layout every
method's released checkpoints use): no edgeprune module, no nn layer. The formulas:

* patch embedding: a P×P patch flattened (channel, row, column) times the conv weight,
  plus CLS and the position embedding;
* LayerNorm (x − mean) / sqrt(var + eps) · w + b, biased variance; GELU x·Φ(x) (erf);
* attention softmax(q·kᵀ / sqrt(d) + bias) · v per head, heads concatenated, then proj;
* a block: x + attn(LN1 x), then + MLP(LN2 x) (fc1, GELU, fc2);
* DynamicViT's predictor (Rao et al. 2021, eq. 2–4): LN, Linear, GELU; the first C/2
  channels per token, the last C/2 averaged over the live tokens; MLP C → C/2 → C/4 → 2,
  log-softmax; channel 0 is "keep";
* SPViT's multi-head predictor (Kong et al. 2022): that scorer per head on the head's
  C/H channels, the heads mixed with SE weights σ(W2 GELU(W1 m + b1) + b2) of the
  per-head channel means m: mixed = Σ w_h s_h / Σ w_h, and the keep probability
  Σ w_h exp(s_h,0) / Σ w_h;
* A-ViT's halting score (Yin et al. 2022): σ(γ · x_0 − β) per token.

tests/test_references_static.py shows these equal the methods' authors' own code on
their golden fixtures (tests/golden); the static-graph tests compare edgeprune's
graphs with them.
"""

from __future__ import annotations

import math

import torch

BLOCK_EPS = 1e-6  # DeiT's block and final LayerNorms
PREDICTOR_EPS = 1e-5  # the selectors' LayerNorms (torch's default, as released)


def layer_norm(x, w, b, eps: float):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def linear(x, w, b=None):
    y = x @ w.t()
    return y if b is None else y + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def softmax(s):
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def log_softmax(s):
    m = s.amax(-1, keepdim=True)
    return s - m - torch.log(torch.exp(s - m).sum(-1, keepdim=True))


def halting(x, scale: float, center: float):
    """A-ViT's halting score per token: σ(γ · x[..., 0] − β)."""
    return sigmoid(scale * x[..., 0] - center)


class RefViT:
    """A DeiT read from a state dict (timm names), ``heads`` attention heads."""

    def __init__(self, state_dict, heads: int, dtype=torch.float32):
        self.p = {k: v.detach().to(dtype) for k, v in state_dict.items()}
        self.heads = heads
        self.depth = 1 + max(int(k.split(".")[1]) for k in self.p if k.startswith("blocks."))

    def w(self, name: str):
        return self.p[name]

    # ---- the model's pieces ------------------------------------------------------------
    def embed(self, img):
        w, b = self.w("patch_embed.proj.weight"), self.w("patch_embed.proj.bias")
        c, _, ps, _ = w.shape
        bsz = img.shape[0]
        g = img.shape[-1] // ps
        patches = img.reshape(bsz, 3, g, ps, g, ps).permute(0, 2, 4, 1, 3, 5)
        x = linear(patches.reshape(bsz, g * g, 3 * ps * ps), w.reshape(c, -1), b)
        cls = self.w("cls_token").expand(bsz, 1, c)
        return torch.cat([cls, x], dim=1) + self.w("pos_embed")

    def qkv(self, i: int, x):
        """q, k, v of block ``i`` on its normed input ``x``: each B×H×N×d."""
        bsz, n, c = x.shape
        y = linear(x, self.w(f"blocks.{i}.attn.qkv.weight"), self.w(f"blocks.{i}.attn.qkv.bias"))
        y = y.reshape(bsz, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return y[0], y[1], y[2]

    def attn_half(self, i: int, x, bias=None):
        """x + attention(LN1 x); returns (that, the attention probabilities B×H×N×N,
        the keys B×H×N×d)."""
        h = layer_norm(
            x, self.w(f"blocks.{i}.norm1.weight"), self.w(f"blocks.{i}.norm1.bias"), BLOCK_EPS
        )
        q, k, v = self.qkv(i, h)
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if bias is not None:
            s = s + bias
        a = softmax(s)
        out = (a @ v).transpose(1, 2).reshape(x.shape)
        p = f"blocks.{i}.attn.proj"
        return x + linear(out, self.w(f"{p}.weight"), self.w(f"{p}.bias")), a, k

    def mlp_half(self, i: int, x):
        p = f"blocks.{i}."
        h = layer_norm(x, self.w(p + "norm2.weight"), self.w(p + "norm2.bias"), BLOCK_EPS)
        h = gelu(linear(h, self.w(p + "mlp.fc1.weight"), self.w(p + "mlp.fc1.bias")))
        return x + linear(h, self.w(p + "mlp.fc2.weight"), self.w(p + "mlp.fc2.bias"))

    def block(self, i: int, x, bias=None):
        return self.mlp_half(i, self.attn_half(i, x, bias)[0])

    def classify(self, x):
        h = layer_norm(x[:, 0], self.w("norm.weight"), self.w("norm.bias"), BLOCK_EPS)
        return linear(h, self.w("head.weight"), self.w("head.bias"))

    def dense(self, img):
        x = self.embed(img)
        for i in range(self.depth):
            x = self.block(i, x)
        return self.classify(x)

    # ---- selectors -----------------------------------------------------------------------
    def _lin(self, x, name: str):
        return linear(x, self.w(f"{name}.weight"), self.w(f"{name}.bias"))

    def _scorer(self, prefix_in: str, prefix_out: str, x, policy):
        """DynamicViT's scorer (in_conv, the live-token mean of the second half,
        out_conv): B×N×2 log-probabilities."""
        ln_w, ln_b = self.w(f"{prefix_in}0.weight"), self.w(f"{prefix_in}0.bias")
        t = gelu(self._lin(layer_norm(x, ln_w, ln_b, PREDICTOR_EPS), f"{prefix_in}1"))
        half = t.shape[-1] // 2
        pol = torch.ones_like(t[..., :1]) if policy is None else policy
        glob = (t[..., half:] * pol).sum(1, keepdim=True) / pol.sum(1, keepdim=True)
        u = torch.cat([t[..., :half], glob.expand(-1, t.shape[1], -1)], dim=-1)
        for j in (0, 2):
            u = gelu(self._lin(u, f"{prefix_out}{j}"))
        return log_softmax(self._lin(u, f"{prefix_out}4"))

    def dynamicvit_scores(self, stage: int, x, policy=None):
        """DynamicViT's predictor at ``stage`` on patch tokens x (B×N×C): B×N×2."""
        p = f"score_predictor.{stage}."
        return self._scorer(p + "in_conv.", p + "out_conv.", x, policy)

    def spvit_scores(self, stage: int, x, policy=None):
        """SPViT's multi-head predictor: (mixed log-probabilities B×N×2, keep
        probability B×N)."""
        p = f"score_predictor.{stage}."
        bsz, n, c = x.shape
        d = c // self.heads
        m = x.reshape(bsz, n, self.heads, d).mean(-1)  # per-head channel means, B×N×H
        m = gelu(linear(m, self.w(p + "senet.0.weight"), self.w(p + "senet.0.bias")))
        wts = sigmoid(linear(m, self.w(p + "senet.2.weight"), self.w(p + "senet.2.bias")))
        s = [
            self._scorer(f"{p}in_conv.{h}.", f"{p}out_conv.{h}.", x[..., h * d : h * d + d], policy)
            for h in range(self.heads)
        ]
        wsum = wts.sum(-1)
        mixed = sum(s[h] * wts[..., h : h + 1] for h in range(self.heads)) / wsum.unsqueeze(-1)
        soft = sum(torch.exp(s[h][..., 0]) * wts[..., h] for h in range(self.heads)) / wsum
        return mixed, soft


def mask_bias(alive, dtype=torch.float32):
    """B×N live mask -> an attention bias that hides dead keys (B×1×1×N)."""
    bias = torch.zeros(alive.shape, dtype=dtype).masked_fill(~alive, float("-inf"))
    return bias[:, None, None, :]


def rows(x, idx):
    """x: B×N×C, idx: B×K -> the rows idx of every sample, B×K×C."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ---- each method's inference, from its paper and released code ---------------------------
def dynamicvit_eval(ref: RefViT, img, ratios, locs):
    """DynamicViT at inference: before block locs[s], the int(P·ρ_s) patch tokens with
    the highest keep score stay (descending score order, CLS first), the rest are
    removed."""
    x = ref.embed(img)
    n_patch = x.shape[1] - 1
    for i in range(ref.depth):
        if i in locs:
            s = list(locs).index(i)
            score = ref.dynamicvit_scores(s, x[:, 1:])[..., 0]
            keep = int(n_patch * ratios[s])
            idx = torch.argsort(score, dim=1, descending=True)[:, :keep]
            x = torch.cat([x[:, :1], rows(x[:, 1:], idx)], dim=1)
        x = ref.block(i, x)
    return ref.classify(x)


def dynamicvit_masked(ref: RefViT, img, ratios, locs):
    """The same hard decisions as an attention mask over the full sequence: dropped
    tokens stay (hidden from every query), the predictor's mean runs over the live ones."""
    x = ref.embed(img)
    b, n, _ = x.shape
    alive = torch.ones(b, n, dtype=torch.bool)
    for i in range(ref.depth):
        if i in locs:
            s = list(locs).index(i)
            live = alive[:, 1:].unsqueeze(-1).to(x.dtype)
            score = ref.dynamicvit_scores(s, x[:, 1:], live)[..., 0]
            score = score.masked_fill(~alive[:, 1:], float("-inf"))
            idx = torch.topk(score, int((n - 1) * ratios[s]), dim=1).indices
            alive = torch.zeros_like(alive)
            alive[:, 0] = True
            alive.scatter_(1, idx + 1, True)
        x = ref.block(i, x, mask_bias(alive, x.dtype))
    return ref.classify(x)


def evit(ref: RefViT, img, rates, locs):
    """EViT (fuse_token): after block i's attention, ceil(rate·(N−1)) non-CLS tokens with
    the highest CLS attention (mean over heads) stay, in that order; the others are fused
    into one token, their sum weighted by that attention; then the MLP."""
    x = ref.embed(img)
    for i in range(ref.depth):
        x, attn, _ = ref.attn_half(i, x)
        if i in locs:
            n = x.shape[1]
            left = math.ceil(rates[list(locs).index(i)] * (n - 1))
            cls_attn = attn[:, :, 0, 1:].mean(dim=1)
            order = torch.argsort(cls_attn, dim=1, descending=True)
            top, rest = order[:, :left], order[:, left:]
            w = torch.gather(cls_attn, 1, rest)
            fused = (rows(x[:, 1:], rest) * w.unsqueeze(-1)).sum(dim=1, keepdim=True)
            x = torch.cat([x[:, :1], rows(x[:, 1:], top), fused], dim=1)
        x = ref.mlp_half(i, x)
    return ref.classify(x)


def _tome_merge(z, unm_idx, src_idx, dst_idx, rb):
    src, dst = z[..., ::2, :], z[..., 1::2, :]
    n, t1, c = src.shape
    unm = src.gather(-2, unm_idx.expand(n, t1 - rb, c))
    src = src.gather(-2, src_idx.expand(n, rb, c))
    dst = dst.scatter_reduce(-2, dst_idx.expand(n, rb, c), src, reduce="sum")
    return torch.cat([unm, dst], dim=1)


def tome(ref: RefViT, img, r: int):
    """ToMe (Bolya et al. 2023): proportional attention (bias log size), then bipartite
    soft matching on the mean key over heads (cosine), the r most similar even tokens
    merged into their odd partners by size-weighted average, CLS protected."""
    x = ref.embed(img)
    size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype)
    for i in range(ref.depth):
        x, _, k = ref.attn_half(i, x, size.log()[:, None, None, :, 0])
        t = x.shape[1]
        rb = min(r, (t - 1) // 2)
        if rb > 0:
            metric = k.mean(1)
            metric = metric / metric.norm(dim=-1, keepdim=True)
            a, bm = metric[..., ::2, :], metric[..., 1::2, :]
            scores = a @ bm.transpose(-1, -2)
            scores[..., 0, :] = -math.inf
            node_max, node_idx = scores.max(dim=-1)
            edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
            unm_idx, src_idx = edge_idx[..., rb:, :], edge_idx[..., :rb, :]
            dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
            unm_idx = unm_idx.sort(dim=1)[0]
            idx = (unm_idx, src_idx, dst_idx, rb)
            x = _tome_merge(x * size, *idx)
            size = _tome_merge(size, *idx)
            x = x / size
        x = ref.mlp_half(i, x)
    return ref.classify(x)


def spvit_masked(ref: RefViT, img, ratios, locs):
    """SPViT as released (masked): before block locs[s], the int(P·ρ_s) live patch tokens
    with the highest keep probability softmax(mixed)[0] stay live; the package token
    Σ p_i x_i over the dropped ones (p: the head-weighted keep probability) is appended
    and stays live to the end; dropped tokens stay in the sequence, hidden."""
    x = ref.embed(img)
    b = x.shape[0]
    n_patch = x.shape[1] - 1
    alive = torch.ones(b, x.shape[1], dtype=torch.bool)
    for i in range(ref.depth):
        if i in locs:
            s = list(locs).index(i)
            rest, rest_alive = x[:, 1:], alive[:, 1:]
            mixed, soft = ref.spvit_scores(s, rest, rest_alive.unsqueeze(-1).to(x.dtype))
            p = softmax(mixed)[..., 0]
            is_patch = torch.zeros_like(rest_alive)
            is_patch[:, :n_patch] = True
            cand = rest_alive & is_patch
            idx = torch.topk(p.masked_fill(~cand, -1.0), int(n_patch * ratios[s]), dim=1).indices
            keep = torch.zeros_like(cand)
            keep.scatter_(1, idx, True)
            dropped = (cand & ~keep).to(x.dtype) * soft
            package = (rest * dropped.unsqueeze(-1)).sum(1, keepdim=True)
            new_alive = rest_alive & (keep | ~is_patch)
            alive = torch.cat([alive[:, :1], new_alive, torch.ones(b, 1, dtype=torch.bool)], 1)
            x = torch.cat([x, package], dim=1)
        x = ref.block(i, x, mask_bias(alive, x.dtype))
    return ref.classify(x)
