"""SPViT, EViT and ToMe static graphs against straightforward reference formulations."""

import contextlib
import math

import pytest
import torch

from edgeprune.core.methods.tokenops import xnnpack_form
from edgeprune.core.source import resolve


def run_block_masked(blk, x, alive):
    b, n, _ = x.shape
    bias = torch.zeros(b, 1, 1, n).masked_fill(~alive[:, None, None, :], float("-inf"))
    out, _ = blk.attn.attend(*blk.attn.qkv_heads(blk.norm1(x)), bias=bias)
    x = x + blk.attn.proj(out)
    return x + blk.mlp(blk.norm2(x))


def spvit_masked(model, img, ratios, locs):
    """Hard top-k keep decisions as an attention mask over a sequence that only grows:
    dropped tokens stay (masked out), each stage appends its package token (the keep-
    probability-weighted mean of the tokens it dropped)."""
    x = model.embed(img)
    b = x.shape[0]
    n_patch = x.shape[1] - 1
    alive = torch.ones(b, x.shape[1], dtype=torch.bool)
    for i, blk in enumerate(model.blocks):
        if i in locs:
            s = locs.index(i)
            rest, rest_alive = x[:, 1:], alive[:, 1:]
            mixed, soft = model.score_predictor[s](rest, rest_alive.unsqueeze(-1).float())
            p = torch.softmax(mixed, dim=-1)[:, :, 0]
            is_patch = torch.zeros_like(rest_alive)
            is_patch[:, :n_patch] = True
            cand = rest_alive & is_patch
            k = int(n_patch * ratios[s])
            idx = torch.topk(p.masked_fill(~cand, -1.0), k, dim=1).indices
            keep = torch.zeros_like(cand)
            keep.scatter_(1, idx, True)
            dropped = (cand & ~keep).float() * soft
            package = (rest * dropped.unsqueeze(-1)).sum(1, keepdim=True)
            new_alive = rest_alive & (keep | ~is_patch)
            alive = torch.cat([alive[:, :1], new_alive, torch.ones(b, 1, dtype=torch.bool)], dim=1)
            x = torch.cat([x, package], dim=1)
        x = run_block_masked(blk, x, alive)
    return model.classify(x)


def evit_reference(model, img, rates, locs):
    """EViT as published: ceil(rate·(N−1)) by CLS attention, complement gathered by
    index, fused token = attention-weighted sum."""
    x = model.embed(img)
    for i, blk in enumerate(model.blocks):
        out, attn = blk.attn.attend(*blk.attn.qkv_heads(blk.norm1(x)))
        x = x + blk.attn.proj(out)
        if i in locs:
            n = x.shape[1]
            left = math.ceil(rates[locs.index(i)] * (n - 1))
            cls_attn = attn[:, :, 0, 1:].mean(dim=1)
            order = torch.argsort(cls_attn, dim=1, descending=True)
            top, rest_idx = order[:, :left], order[:, left:]
            non_cls = x[:, 1:]
            c = x.shape[-1]
            kept = torch.gather(non_cls, 1, top.unsqueeze(-1).expand(-1, -1, c))
            others = torch.gather(non_cls, 1, rest_idx.unsqueeze(-1).expand(-1, -1, c))
            w = torch.gather(cls_attn, 1, rest_idx)
            fused = (others * w.unsqueeze(-1)).sum(dim=1, keepdim=True)
            x = torch.cat([x[:, :1], kept, fused], dim=1)
        x = x + blk.mlp(blk.norm2(x))
    return model.classify(x)


def _tome_merge(z, unm_idx, src_idx, dst_idx, rb):
    src, dst = z[..., ::2, :], z[..., 1::2, :]
    n, t1, c = src.shape
    unm = src.gather(-2, unm_idx.expand(n, t1 - rb, c))
    src = src.gather(-2, src_idx.expand(n, rb, c))
    dst = dst.scatter_reduce(-2, dst_idx.expand(n, rb, c), src, reduce="sum")
    return torch.cat([unm, dst], dim=1)


def tome_reference(model, img, r):
    """ToMe's bipartite soft matching with argsort, sort and scatter_reduce."""
    x = model.embed(img)
    size = torch.ones(x.shape[0], x.shape[1], 1)
    for blk in model.blocks:
        q, k, v = blk.attn.qkv_heads(blk.norm1(x))
        out, _ = blk.attn.attend(q, k, v, size.log()[:, None, None, :, 0])
        x = x + blk.attn.proj(out)
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
        x = x + blk.mlp(blk.norm2(x))
    return model.classify(x)


@pytest.fixture(scope="module")
def img():
    torch.manual_seed(0)
    return torch.randn(3, 3, 224, 224)


FORMS = pytest.mark.parametrize("form", ["index", "xnnpack"])


def _form(form: str):
    """The selection's graph form (methods/tokenops.py): both must match the reference."""
    return xnnpack_form() if form == "xnnpack" else contextlib.nullcontext()


@FORMS
def test_spvit_equals_masked(img, form):
    src = resolve("deit_tiny:spvit")
    model = src.model()
    with torch.no_grad(), _form(form):
        ours = model(img)
        ref = spvit_masked(model, img, src.config.keep_ratios, list(src.config.prune_locs))
        dense = type(model).__mro__[2].forward(model, img)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert (ours - dense).abs().max().item() > 1e-3


def test_spvit_plan_counts_package_tokens():
    plan = resolve("deit_small:spvit").plan
    assert plan.tokens_per_block == (197,) * 3 + (122,) * 3 + (75,) * 3 + (30,) * 3


@FORMS
def test_evit_equals_reference(img, form):
    src = resolve("deit_tiny:evit@0.7")
    assert src.plan.tokens_per_block[3:5] == (197, 140)
    assert src.plan.mlp_tokens[3] == 140 and src.plan.final_tokens == 72
    model = src.model()
    with torch.no_grad(), _form(form):
        ours = model(img)
        ref = evit_reference(model, img, src.config.keep_ratios, list(src.config.prune_locs))
    assert (ours - ref).abs().max().item() <= 1e-5


@FORMS
def test_tome_equals_reference(img, form):
    src = resolve("deit_tiny:tome@r16")
    assert src.plan.attn_tokens[:3] == (197, 181, 165)
    assert src.plan.final_tokens == 11  # the last block is clamped to (21 - 1) // 2
    model = src.model()
    with torch.no_grad(), _form(form):
        ours = model(img)
        ref = tome_reference(model, img, 16)
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "spec", ["deit_tiny:spvit", "deit_tiny:evit@0.7", "deit_tiny:tome@r8", "deit_tiny:avit"]
)
def test_selector_module_shapes(spec):
    src = resolve(spec)
    for stage in src.plan.selectors[:2]:
        mod = src.method.selector_module(src.arch, stage).eval()
        with torch.no_grad():
            y = mod(torch.randn(2, stage.tokens_in, src.arch.embed_dim))
        assert y.shape == (2, stage.tokens_out, src.arch.embed_dim)
    assert all(m > 0 for m in src.method.selector_macs(src.arch, src.plan))
