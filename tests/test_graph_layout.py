"""The cheaper graph layouts (issue #7) compute the same function as the plain forms."""

import contextlib

import numpy as np
import onnx
import pytest
import torch

from edgeprune.core.methods.dynamicvit import PredictorLG
from edgeprune.core.methods.spvit import MultiheadPredictor
from edgeprune.core.methods.tokenops import (
    _complement_ascending,
    best_match,
    select_top,
    xnnpack_form,
)
from edgeprune.core.methods.tome import bipartite_merge
from edgeprune.core.models.deit import init_random_
from edgeprune.core.source import resolve
from edgeprune.export.onnx import verified_onnx
from edgeprune.runtimes.onnxruntime import make_session, run


def _per_head_loop(m: MultiheadPredictor, x, policy=None):
    """SPViT's MultiheadPredictorLG as published: one scorer per head, in a loop."""
    b, n, _ = x.shape
    h, d = m.num_heads, m.head_dim
    xh = x.reshape(b, n, h, d)
    weights = m.senet(xh.mean(dim=-1))
    total, soft = 0, 0
    for i in range(h):
        t = m.in_conv[i](xh[:, :, i])
        if policy is None:
            glob = t[:, :, d // 2 :].mean(dim=1, keepdim=True)
        else:
            glob = (t[:, :, d // 2 :] * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True)
        t = torch.cat([t[:, :, : d // 2], glob.expand(-1, n, -1)], dim=-1)
        score = m.out_conv[i](t)
        total = total + torch.log_softmax(score, dim=-1) * weights[:, :, i : i + 1]
        soft = soft + torch.softmax(score, dim=-1)[:, :, 0] * weights[:, :, i]
    return total / weights.sum(dim=-1, keepdim=True), soft / weights.sum(dim=-1)


def _concat_form(m: PredictorLG, x, policy=None):
    """DynamicViT's PredictorLG as published: local and broadcast global, concatenated."""
    x = m.in_conv(x)
    c = x.shape[-1]
    if policy is None:
        glob = x[:, :, c // 2 :].mean(dim=1, keepdim=True)
    else:
        glob = (x[:, :, c // 2 :] * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True)
    return m.out_conv(torch.cat([x[:, :, : c // 2], glob.expand(-1, x.shape[1], -1)], dim=-1))


@pytest.mark.parametrize("dim,heads", [(192, 3), (384, 6)])
def test_multihead_predictor_equals_per_head_loop(dim, heads):
    m = MultiheadPredictor(dim, heads)
    init_random_(m, 3)
    x = torch.randn(2, 150, dim)
    policy = (torch.rand(2, 150, 1) > 0.4).float()
    with torch.no_grad():
        for pol in (None, policy):
            for got, want in zip(m(x, pol), _per_head_loop(m, x, pol), strict=True):
                assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dim,heads", [(192, 3), (384, 6)])
def test_multihead_keep_scores_rank_as_published(dim, heads):
    """The static graph's key is the logit of the published keep probability
    softmax(mixed)[..., 0]; its package weights are the published second output."""
    m = MultiheadPredictor(dim, heads)
    init_random_(m, 5)
    x = torch.randn(2, 150, dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        key, soft = m.keep_scores(x)
        mixed, want_soft = _per_head_loop(m, x)
    assert key.shape == soft.shape == (2, 150)
    want_p = torch.softmax(mixed, dim=-1)[..., 0]
    assert (torch.sigmoid(key) - want_p).abs().max().item() <= 1e-5
    assert (soft - want_soft).abs().max().item() <= 1e-5
    assert torch.equal(key.argsort(dim=1), want_p.argsort(dim=1))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dim,heads", [(192, 3), (384, 6)])
def test_multihead_keep_scores_same_in_the_xnnpack_form(dim, heads, tied):
    """The XNNPACK form shares the per-head channel means between the SE head weights
    and the LayerNorm and takes the token mean as a MatMul; with tied heads (the
    released layout) it runs token-major, one fully-connected layer per Linear: the
    same key and package weights as the index form (one LayerNormalization op,
    ReduceMean)."""
    m = MultiheadPredictor(dim, heads)
    init_random_(m, 6)
    if tied:
        m.tie_heads_()
    assert m.heads_tied() is tied
    x = torch.randn(2, 150, dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        key, soft = m.keep_scores(x)
        with xnnpack_form():
            key_x, soft_x = m.keep_scores(x)
    assert (key_x - key).abs().max().item() <= 1e-5
    assert (soft_x - soft).abs().max().item() <= 1e-5
    assert torch.equal(key_x.argsort(dim=1), key.argsort(dim=1))


def test_predictor_lg_equals_concat_form():
    m = PredictorLG(192)
    init_random_(m, 4)
    x = torch.randn(3, 196, 192)
    policy = (torch.rand(3, 196, 1) > 0.3).float()
    with torch.no_grad():
        assert (m(x) - _concat_form(m, x)).abs().max().item() <= 1e-5
        assert (m(x, policy) - _concat_form(m, x, policy)).abs().max().item() <= 1e-5


def test_xnnpack_form_keeps_the_same_tokens_in_the_same_order():
    """Rows, values, the dropped mask, the rest in order and the merge into the best
    match: the XNNPACK form (row copies by index_select) equals the index form
    (gathers)."""
    g = torch.Generator().manual_seed(2)
    key = torch.randn(3, 50, generator=g)
    x = torch.randn(3, 50, 7, generator=g)
    scores = torch.randn(3, 50, 17, generator=g)
    scores[:, :, 9] = scores[:, :, 3]  # tied best columns: the first one takes the row
    for largest in (True, False):
        index = select_top(key, 12, largest)
        with xnnpack_form():
            xnn = select_top(key, 12, largest)
            rows, rest = xnn.rows(x), xnn.rest_in_order(x)
            into = xnn.into_best(scores, x)
        assert torch.equal(rows, index.rows(x))
        assert torch.equal(xnn.values(key), index.values(key))
        assert torch.equal(xnn.dropped(key), index.dropped(key))
        assert torch.equal(rest, index.rest_in_order(x))
        assert torch.equal(into, index.into_best(scores, x)) and into.shape == (3, 17, 7)


def test_exact_ties_rank_equal_keys_in_token_order():
    tied = torch.zeros(2, 9)
    tied[:, 4:] = 1.0  # five equal best keys: the first three in token order
    for form in (contextlib.nullcontext(), xnnpack_form()):
        with form:
            sel = select_top(tied, 3, exact_ties=True)
        assert sel.idx.tolist() == [[4, 5, 6]] * 2


def test_best_match_one_hot_is_argmax_first_on_ties():
    s = torch.tensor([[[0.1, 0.9, 0.9, 0.2], [0.5, 0.5, 0.1, 0.5], [0.3, 0.2, 0.1, 0.0]]])
    want = best_match(s)
    with xnnpack_form():
        got = best_match(s)
    assert torch.equal(got, want)
    assert got.sum(dim=1).tolist() == [[1.0, 1.0, 1.0]]  # one destination per row


def test_complement_ascending():
    g = torch.Generator().manual_seed(0)
    src = torch.stack([torch.randperm(40, generator=g)[:9] for _ in range(4)])
    got = _complement_ascending(src, 40)
    for row, s in zip(got.tolist(), src.tolist(), strict=True):
        assert row == sorted(set(range(40)) - set(s))


@pytest.mark.parametrize("sized", [False, True])
def test_tome_merge_same_in_both_forms(sized):
    """The XNNPACK form's merge (size weights divided before the MatMul, row norms by a
    fully-connected layer) gives the index form's tokens and sizes (merge_wavg)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 61, 8, generator=g)
    metric = torch.randn(2, 61, 5, generator=g)
    size = torch.rand(2, 61, 1, generator=g) * 3 + 1 if sized else None
    want, want_size = bipartite_merge(x, size, metric, r=20)
    with xnnpack_form():
        got, got_size = bipartite_merge(x, size, metric, r=20)
    assert got.shape == want.shape == (2, 41, 8)
    assert (got - want).abs().max().item() <= 1e-5
    assert (got_size - want_size).abs().max().item() <= 1e-5


@pytest.mark.parametrize("xnnpack", [False, True])
def test_tome_merge_with_tied_scores_is_a_partition(xnnpack):
    """Identical tokens (flat image regions) tie in the matching scores: the merge must
    still use every token exactly once, so sizes and size-weighted sums are conserved
    (in both graph forms: each merged token goes to its first best match only)."""
    x = torch.randn(2, 61, 8)
    x[:, 10:40] = x[:, 10:11]  # 30 identical tokens
    size = torch.rand(2, 61, 1) + 0.5
    with xnnpack_form() if xnnpack else contextlib.nullcontext():
        out, new_size = bipartite_merge(x, size, x, r=20)
    assert out.shape == (2, 41, 8) and new_size.shape == (2, 41, 1)
    assert torch.allclose(new_size.sum(1), size.sum(1), atol=1e-5)
    assert torch.allclose((out * new_size).sum(1), (x * size).sum(1), atol=1e-4)


@pytest.mark.parametrize("spec", ["deit_tiny:spvit", "deit_tiny:tome@r16"])
def test_row_gathers_are_gathernd_and_dynamic_batch_runs_any_batch(spec):
    src = resolve(spec)
    v = verified_onnx(src, batch=2, n_parity_inputs=2, dynamic_batch=True)
    ops = [n.op_type for n in v.proto.graph.node]
    assert "GatherND" in ops
    gathers = [n for n in v.proto.graph.node if n.op_type == "GatherND"]
    assert all(a.i == 1 for n in gathers for a in n.attribute if a.name == "batch_dims") and gathers
    if spec.endswith("spvit"):
        assert "GatherElements" not in ops
    sess = make_session(onnx.load_from_string(v.data).SerializeToString())
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        ref = src.model()(x).numpy()
    assert np.abs(run(sess, x.numpy()) - ref).max() <= 1e-4


def test_tied_heads_are_read_from_the_weights_and_take_the_token_major_form(monkeypatch):
    m = MultiheadPredictor(192, 3)
    init_random_(m, 2)
    assert not m.heads_tied()  # random heads differ
    m.tie_heads_()
    assert m.heads_tied()
    taken = []
    token_major = MultiheadPredictor._token_major_scores
    monkeypatch.setattr(
        MultiheadPredictor,
        "_token_major_scores",
        lambda self, x: taken.append(1) or token_major(self, x),
    )
    x = torch.randn(1, 40, 192)
    with torch.no_grad():
        m.keep_scores(x)  # index form: never token-major
        assert taken == []
        with xnnpack_form():
            m.keep_scores(x)
        assert taken == [1]
        m.out_conv[2][4].bias[0] += 0.1  # one head's weight changes in place: untied
        assert not m.heads_tied()
        with xnnpack_form():
            m.keep_scores(x)
        assert taken == [1]
        m.tie_heads_()
        assert m.heads_tied()
        m.in_conv[1][1].weight = torch.nn.Parameter(m.in_conv[1][1].weight * 2)  # replaced
        assert not m.heads_tied()
