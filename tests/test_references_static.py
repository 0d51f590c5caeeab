"""The hand-written references (tests/reference_vit.py) against the methods' authors'
own code: on each golden fixture (tests/golden, logits written by the released model
classes, see tests/golden/make_golden.py) the reference, reading the checkpoint's
tensors with torch.load and nothing of edgeprune, gives the authors' logits. The
static-graph tests (test_dynamicvit.py, test_methods_static.py, test_avit_parity.py)
then compare edgeprune's graphs with these references, so neither side of those tests
is built from edgeprune's own attention, predictor or halting code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import reference_vit as R

GOLDEN = Path(__file__).parent / "golden"


def golden(method: str):
    d = GOLDEN / method
    meta = json.loads((d / "meta.json").read_text())
    sd = torch.load(d / meta["checkpoint"], weights_only=True)["model"]
    x = torch.load(GOLDEN / "input.pt", weights_only=True).float()
    return R.RefViT(sd, meta["num_heads"]), meta, x, torch.load(d / "expected.pt")


def run(method: str, ref, meta, x):
    if method == "dynamicvit":
        return R.dynamicvit_eval(ref, x, meta["keep_ratios"], meta["prune_locs"])
    if method == "evit":
        return R.evit(ref, x, meta["keep_ratios"], meta["prune_locs"])
    if method == "tome":
        return R.tome(ref, x, meta["r"])
    return R.spvit_masked(ref, x, meta["keep_ratios"], meta["prune_locs"])


@pytest.mark.parametrize("method", ["dynamicvit", "evit", "tome", "spvit"])
def test_reference_equals_the_authors_code(method):
    ref, meta, x, expected = golden(method)
    assert meta["compare"] == "equal"
    with torch.no_grad():
        got = run(method, ref, meta, x)
    assert (got - expected).abs().max().item() <= 1e-4
    assert got.argmax(-1).tolist() == meta["top1"]


@pytest.mark.parametrize("method", ["dynamicvit", "evit", "tome", "spvit"])
def test_the_selection_matters_to_the_reference(method):
    """Guard against a reference that keeps every token: the dense model differs."""
    ref, meta, x, expected = golden(method)
    with torch.no_grad():
        dense = ref.dense(x)
    assert (dense - expected).abs().max().item() > 1e-2


def test_dynamicvit_masked_reference_equals_its_eval_reference():
    """The masked formulation (hard decisions as an attention mask) is the same model."""
    ref, meta, x, expected = golden("dynamicvit")
    with torch.no_grad():
        masked = R.dynamicvit_masked(ref, x, meta["keep_ratios"], meta["prune_locs"])
    assert (masked - expected).abs().max().item() <= 1e-4


def test_reference_pieces_against_closed_forms():
    """The pieces on inputs whose answers are known without any attention code: one
    token attends only to itself (output = proj(v)); LayerNorm of a constant-free row;
    GELU at 0 and ±large; the halting score at the centre is one half."""
    torch.manual_seed(0)
    c, heads = 8, 2
    sd = {
        "blocks.0.norm1.weight": torch.ones(c),
        "blocks.0.norm1.bias": torch.zeros(c),
        "blocks.0.attn.qkv.weight": torch.randn(3 * c, c),
        "blocks.0.attn.qkv.bias": torch.randn(3 * c),
        "blocks.0.attn.proj.weight": torch.randn(c, c),
        "blocks.0.attn.proj.bias": torch.randn(c),
    }
    ref = R.RefViT(sd, heads)
    x = torch.randn(1, 1, c)
    y, attn, _ = ref.attn_half(0, x)
    h = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-6)
    v = h @ sd["blocks.0.attn.qkv.weight"][2 * c :].t() + sd["blocks.0.attn.qkv.bias"][2 * c :]
    want = x + v @ sd["blocks.0.attn.proj.weight"].t() + sd["blocks.0.attn.proj.bias"]
    assert torch.allclose(y, want, atol=1e-5) and attn.shape == (1, heads, 1, 1)
    assert float(attn.max()) == pytest.approx(1.0)
    assert R.gelu(torch.tensor([0.0, 30.0, -30.0])).tolist() == pytest.approx([0.0, 30.0, 0.0])
    assert float(R.halting(torch.tensor([[2.0, 5.0]]), 10.0, 20.0)) == pytest.approx(0.5)
    s = torch.tensor([[1.0, 2.0, 3.0]])
    assert R.softmax(s).tolist()[0] == pytest.approx(torch.softmax(s, -1).tolist()[0])
