"""The latency-aware sparsity loss in DynamicViT's training loop (edgeprune finetune):
a short run on a synthetic folder moves the predicted latency from the dense value to
within 5 % of the target with a finite distillation loss; the gradient reaches the
selectors; the training forward is the static model's; the checkpoint exports."""

import json
import math

import pytest
import torch

from edgeprune.core.images import write_demo_images
from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.training.finetune import FinetuneRequest, finetune, save_checkpoint
from edgeprune.training.forms import DynamicViTTraining, softmax_with_policy
from edgeprune.training.loss import LatencyAwareSparsityLoss
from tests.accuracy_helper import HEADS, LOCS, TINY, tiny_table, write_dense, write_profile

TARGET = 3.0  # the dense model predicts 4.05 ms on tiny_table


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    write_dense(d / "dense.pth")
    write_profile(d / "profile.json")
    write_demo_images(d / "imgs", classes=4, per_class=4, size=40)
    return d


def _model(keep=(1.0, 1.0, 1.0)):
    m = get_method("dynamicvit")
    model = m.build(TINY, m.token_plan(TINY, MethodConfig(LOCS, keep, {})))
    from edgeprune.core.models.deit import init_random_

    init_random_(model, 0)
    return model.eval()


def request(d, **kw) -> FinetuneRequest:
    """The tiny model's fine-tuning run towards TARGET on the setup's profile; ``kw``: what
    a test varies (steps, seed, the latency weight)."""
    return FinetuneRequest(
        src=str(d / "dense.pth"),
        images=d / "imgs",
        profile=d / "profile.json",
        target_ms=TARGET,
        batch=8,
        lr=3e-3,
        locs=LOCS,
        heads=HEADS,
        threads=1,
        **kw,
    )


def test_short_run_reaches_the_target(setup):
    d = setup
    res, model = finetune(request(d, steps=60, seed=0))
    assert res.dense_ms == pytest.approx(4.05)
    # starts at the dense model (predictors keep every token; + the selectors' cost)
    assert abs(res.start_ms - res.dense_ms) / res.dense_ms < 0.05
    # the static model at the learned keep ratios predicts within 5 % of the target
    assert abs(res.final_ms - TARGET) / TARGET <= 0.05, res.to_dict()
    assert all(math.isfinite(s.distill) and math.isfinite(s.token_distill) for s in res.steps)
    assert len(res.steps) == 60 and all(math.isfinite(s.predicted_ms) for s in res.steps)
    assert all(0 < r <= 1 for r in res.keep_ratios)
    # the checkpoint: DynamicViT's key layout, which export takes with the learned schedule
    ckpt = d / "ft.pth"
    save_checkpoint(model, res, ckpt)
    sd = torch.load(ckpt, weights_only=True)["model"]
    assert {k.split(".")[1] for k in sd if k.startswith("score_predictor.")} == {"0", "1", "2"}
    from edgeprune.cli.app import main

    keep = ",".join(f"{r:g}" for r in res.keep_ratios)
    out = d / "ft.onnx"
    args = ["export", str(ckpt), "--heads", "2", "--locs", "1,2,3", "--keep", keep]
    assert main([*args, "--out", str(out)]) == 0
    assert out.exists()


def test_without_the_latency_loss_nothing_is_pruned(setup):
    """The control: the same run with the latency term weighted 0 stays near dense, so
    the test above measures the loss's effect, not drift."""
    res, _ = finetune(request(setup, steps=30, latency_weight=0.0))
    assert res.final_ms > 1.05 * TARGET


def test_gradient_reaches_every_selector():
    torch.manual_seed(0)
    model = _model()
    train = DynamicViTTraining(model).train()
    crit = LatencyAwareSparsityLoss(
        tiny_table(), target_ms=2.0, method="dynamicvit", locs=LOCS, shape="squared"
    )
    _, _, masks = train(torch.randn(4, 3, 32, 32))
    assert [tuple(m.shape) for m in masks] == [(4, 16)] * 3
    crit(masks).backward()
    for s, pred in enumerate(model.score_predictor):
        g = pred.out_conv[4].weight.grad
        assert g is not None and g.abs().sum() > 0, f"no gradient into selector {s}"
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.head.parameters())


def test_training_forward_is_the_static_model_when_nothing_is_dropped():
    model = _model()
    train = DynamicViTTraining(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        # predictors forced to keep everything: masked attention = plain attention
        for p in model.score_predictor:
            p.out_conv[4].bias.copy_(torch.tensor([50.0, -50.0]))
        logits, _, masks = train(x)
        assert all(bool((m == 1).all()) for m in masks)
        torch.testing.assert_close(logits, model(x), atol=1e-4, rtol=1e-4)


def test_softmax_with_policy_ignores_dropped_keys():
    attn = torch.randn(2, 1, 4, 4)
    policy = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]).view(2, 4, 1)
    a = softmax_with_policy(attn, policy, eps=0.0)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 1, 4))
    assert a[0, 0, 0, 2] == 0 and a[1, 0, 3, 1] == 0
    assert a[0, 0, 2, 2] > 0  # a dropped token still attends to itself


def test_finetune_cli_logs_predicted_ms(cli, setup, tmp_path):
    d = setup
    code, out, err = cli(
        "finetune",
        d / "dense.pth",
        "--heads",
        "2",
        "--images",
        d / "imgs",
        "--profile",
        d / "profile.json",
        "--target-ms",
        "3",
        "--steps",
        "4",
        "--locs",
        "1,2,3",
        "--threads",
        "1",
        "--out",
        tmp_path / "c.pth",
        "--json",
    )
    assert code == 0, err
    rep = json.loads(out)
    assert len(rep["predicted_ms_per_step"]) == 4 and rep["target_ms"] == 3.0
    assert (tmp_path / "c.pth").exists()


def test_budget_file_sets_target_and_stages(setup, tmp_path):
    from edgeprune.budget.file import budget_dict
    from edgeprune.budget.search import search
    from edgeprune.core.atomic import write_json_atomic
    from edgeprune.latency.model import load_model

    d = setup
    model = load_model(d / "profile.json")
    res = search(model, 3.2, "dynamicvit", "geometric", LOCS)
    write_json_atomic(tmp_path / "b.json", budget_dict(res, model, d / "profile.json"))
    req = FinetuneRequest(
        src=str(d / "dense.pth"),
        images=d / "imgs",
        budget=tmp_path / "b.json",
        steps=3,
        batch=4,
        heads=HEADS,
        threads=1,
    )
    out, _ = finetune(req)
    assert out.target_ms == 3.2 and out.locs == LOCS and len(out.steps) == 3
