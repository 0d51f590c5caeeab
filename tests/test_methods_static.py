"""SPViT, EViT and ToMe static graphs against straightforward reference formulations,
written out by hand (tests/reference_vit.py; test_references_static.py checks them
against the authors' code)."""

import contextlib

import pytest
import torch

from edgeprune.core.methods.tokenops import xnnpack_form
from edgeprune.core.source import resolve
from tests import reference_vit as R


def reference(model) -> R.RefViT:
    """The hand-written DeiT and selectors (tests/reference_vit.py) on the model's own
    weights: no edgeprune module runs in it."""
    return R.RefViT(model.state_dict(), model.arch.num_heads)


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
        r = reference(model)
        ref = R.spvit_masked(r, img, src.config.keep_ratios, list(src.config.prune_locs))
        dense = r.dense(img)
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
        ref = R.evit(reference(model), img, src.config.keep_ratios, src.config.prune_locs)
    assert (ours - ref).abs().max().item() <= 1e-5


@FORMS
def test_tome_equals_reference(img, form):
    src = resolve("deit_tiny:tome@r16")
    assert src.plan.attn_tokens[:3] == (197, 181, 165)
    assert src.plan.final_tokens == 11  # the last block is clamped to (21 - 1) // 2
    model = src.model()
    with torch.no_grad(), _form(form):
        ours = model(img)
        ref = R.tome(reference(model), img, 16)
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
