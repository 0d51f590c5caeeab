"""The static DynamicViT graph equals DynamicViT's own eval forward and a masked
formulation of the same hard decisions."""

import pytest
import torch

from edgeprune.core.source import resolve


def batch_index_select(x, idx):
    """DynamicViT's helper: flat index_select with per-sample offsets."""
    b, n = x.shape[:2]
    offset = torch.arange(b, dtype=torch.long).view(b, 1) * n
    flat = (idx + offset).reshape(-1)
    if x.dim() == 3:
        return x.reshape(b * n, -1)[flat].reshape(b, idx.shape[1], -1)
    return x.reshape(b * n)[flat].reshape(b, idx.shape[1])


def reference_eval_forward(model, img, ratios, locs):
    """DynamicViT's published eval path: argsort(descending)[:int(196*rho)], CLS first,
    index-select of tokens and of prev_decision, predictor with the policy mean."""
    x = model.embed(img)
    b = x.shape[0]
    init_n = x.shape[1] - 1
    prev_decision = torch.ones(b, init_n, 1)
    p = 0
    for i, blk in enumerate(model.blocks):
        if i in locs:
            spatial_x = x[:, 1:]
            pred = model.score_predictor[p](spatial_x, prev_decision).reshape(b, -1, 2)
            score = pred[:, :, 0]
            keep = int(init_n * ratios[p])
            keep_policy = torch.argsort(score, dim=1, descending=True)[:, :keep]
            now_policy = torch.cat([torch.zeros(b, 1, dtype=torch.long), keep_policy + 1], dim=1)
            x = batch_index_select(x, now_policy)
            prev_decision = batch_index_select(prev_decision, keep_policy)
            p += 1
        x = blk(x)
    return model.classify(x)


def masked_forward(model, img, ratios, locs):
    """Hard keep decisions as an attention mask over the full 197-token sequence."""
    x = model.embed(img)
    b, n, _ = x.shape
    alive = torch.ones(b, n, dtype=torch.bool)
    p = 0
    for i, blk in enumerate(model.blocks):
        if i in locs:
            patch_alive = alive[:, 1:].unsqueeze(-1).to(x.dtype)
            score = model.score_predictor[p](x[:, 1:], patch_alive)[:, :, 0]
            score = score.masked_fill(~alive[:, 1:], float("-inf"))
            keep = int((n - 1) * ratios[p])
            idx = torch.topk(score, keep, dim=1).indices
            alive = torch.zeros_like(alive)
            alive[:, 0] = True
            alive.scatter_(1, idx + 1, True)
            p += 1
        bias = torch.zeros(b, 1, 1, n).masked_fill(~alive[:, None, None, :], float("-inf"))
        h = blk.norm1(x)
        out, _ = blk.attn.attend(*blk.attn.qkv_heads(h), bias=bias)
        x = x + blk.attn.proj(out)
        x = x + blk.mlp(blk.norm2(x))
    return model.classify(x)


@pytest.mark.parametrize("spec", ["deit_tiny:dynamicvit@0.7", "deit_tiny:dynamicvit@0.5"])
@pytest.mark.parametrize("batch", [1, 3])
def test_static_equals_reference_and_masked(spec, batch):
    src = resolve(spec)
    model = src.model()
    torch.manual_seed(batch)
    img = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        ours = model(img)
        ref = reference_eval_forward(model, img, src.config.keep_ratios, src.config.prune_locs)
        masked = masked_forward(model, img, src.config.keep_ratios, src.config.prune_locs)
    assert ours.shape == (batch, 1000)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert (ours - masked).abs().max().item() <= 1e-5


def test_pruning_changes_the_output():
    """Guard against a rewrite that silently keeps every token."""
    src = resolve("deit_tiny:dynamicvit@0.5")
    model = src.model()
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pruned = model(img)
        dense = model.__class__.__mro__[2].forward(model, img)  # VisionTransformer.forward
    assert (pruned - dense).abs().max().item() > 1e-3


def test_batch_independent_and_deterministic():
    model = resolve("deit_tiny:dynamicvit@0.7").model()
    img = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        full = model(img)
        one_by_one = torch.cat([model(img[i : i + 1]) for i in range(4)])
        again = model(img)
    assert (full - one_by_one).abs().max().item() <= 1e-5
    assert torch.equal(full, again)


def test_selector_module_for_profiling():
    src = resolve("deit_small:dynamicvit@0.7")
    stage = src.plan.selectors[1]
    mod = src.method.selector_module(src.arch, stage).eval()
    with torch.no_grad():
        y = mod(torch.randn(2, stage.tokens_in, src.arch.embed_dim))
    assert y.shape == (2, stage.tokens_out, src.arch.embed_dim)
