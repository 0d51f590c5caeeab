"""The static DynamicViT graph equals DynamicViT's eval forward and a masked
formulation of the same hard decisions, both written out by hand
(tests/reference_vit.py; test_references_static.py checks them against the authors'
code)."""

import pytest
import torch

from edgeprune.core.source import resolve
from tests.reference_vit import RefViT, dynamicvit_eval, dynamicvit_masked


def reference(model) -> RefViT:
    """The hand-written DeiT and predictor (tests/reference_vit.py) on the model's own
    weights: no edgeprune module runs in it."""
    return RefViT(model.state_dict(), model.arch.num_heads)


@pytest.mark.parametrize("spec", ["deit_tiny:dynamicvit@0.7", "deit_tiny:dynamicvit@0.5"])
@pytest.mark.parametrize("batch", [1, 3])
def test_static_equals_reference_and_masked(spec, batch):
    src = resolve(spec)
    model = src.model()
    torch.manual_seed(batch)
    img = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        ours = model(img)
        r = reference(model)
        ref = dynamicvit_eval(r, img, src.config.keep_ratios, src.config.prune_locs)
        masked = dynamicvit_masked(r, img, src.config.keep_ratios, src.config.prune_locs)
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
        dense = reference(model).dense(img)
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
