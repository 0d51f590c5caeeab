"""``edgeprune finetune``: the latency-aware sparsity loss in each method's training form,
the field's recipe (timm), one process or torchrun, a checkpoint every epoch that
resumes and exports without --keep.

On the tiny model (32×32 images, 16 patches, depth 4) and a synthetic latency table,
so the runs take seconds; the references are the table's own predictions (the aim),
one process against two, and an uninterrupted run against a resumed one."""

from __future__ import annotations

import json
import math

import pytest
import torch

from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.training.data import Recipe
from edgeprune.training.finetune import FinetuneRequest, finetune_to_file
from edgeprune.training.forms import DynamicViTTraining, softmax_with_policy
from edgeprune.training.loss import LatencyAwareSparsityLoss
from edgeprune.training.recipe import Optim
from tests.accuracy_helper import HEADS, LOCS, TINY, tiny_table
from tests.training_helper import setup_dir, write_budget

TARGET = 3.0  # the dense model predicts 4.05 ms on tiny_table


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return setup_dir(tmp_path_factory.mktemp("ft"))


def quiet_recipe() -> dict:
    """No random augmentation and no Mixup: what one and two processes share exactly."""
    return {
        "optim": Optim(lr=1e-2, mixup=0.0, cutmix=0.0, smoothing=0.0, weight_decay=0.0),
        "data_recipe": Recipe(augment=False),
    }


def request(d, **kw) -> FinetuneRequest:
    base = {
        "src": str(d / "dense.pth"), "data": d / "data", "profile": d / "profile.json",
        "target_ms": TARGET, "method": "dynamicvit", "locs": LOCS, "batch": 8, "heads": HEADS,
        "threads": 1, "epochs": 4, **quiet_recipe(),
    }  # fmt: skip
    return FinetuneRequest(**{**base, **kw})


def test_short_run_reaches_the_aim_and_exports_without_keep(setup, tmp_path, cli):
    res = finetune_to_file(request(setup), tmp_path / "ft.pth")
    assert res.dense_ms == pytest.approx(4.05)
    assert abs(res.start_ms - res.dense_ms) / res.dense_ms < 0.05  # starts keeping all
    # the static model at the schedule read off the trained predictors: within 5 % of the aim
    assert abs(res.final_ms - TARGET) / TARGET <= 0.05, res.to_dict()
    assert [e.epoch for e in res.epochs] == [1, 2, 3, 4]
    assert all(0 <= e.top1 <= 100 and math.isfinite(e.loss) for e in res.epochs)
    log = [json.loads(x) for x in (tmp_path / "ft.jsonl").read_text().splitlines()]
    assert sum(1 for x in log if x.get("epoch_end")) == 4 and (tmp_path / "ft.png").stat().st_size
    ck = torch.load(tmp_path / "ft.pth", weights_only=True)
    assert ck["edgeprune"]["keep_ratios"] == res.epochs[-1].schedule["keep_ratios"]
    assert {k.split(".")[1] for k in ck["model"] if k.startswith("score_predictor.")} == {
        "0",
        "1",
        "2",
    }
    # export needs neither --keep nor --locs nor --method: the record carries them
    code, _, err = cli("export", tmp_path / "ft.pth", "--heads", "2", "--out", tmp_path / "ft.onnx")
    assert code == 0, err
    man = json.loads((tmp_path / "ft.onnx.manifest.json").read_text())
    assert man["trained_for"]["aim_ms"] == TARGET
    assert man["token_plan"]["keep_ratios"] == pytest.approx(ck["edgeprune"]["keep_ratios"])
    assert man["token_plan"]["prune_locs"] == list(LOCS)


def test_without_the_latency_loss_nothing_is_pruned(setup, tmp_path):
    """The control: the latency term weighted 0 stays near dense."""
    res = finetune_to_file(request(setup, latency_weight=0.0, epochs=2), tmp_path / "c.pth")
    assert res.final_ms > 1.05 * TARGET


def test_budget_sets_method_schedule_and_aim(setup, tmp_path):
    b = write_budget(setup, 3.2)
    req = request(setup, budget=b, profile=None, target_ms=None, method=None, locs=None, epochs=1)
    res = finetune_to_file(req, tmp_path / "b.pth")
    data = json.loads(b.read_text())
    assert res.aim_ms == pytest.approx(data["aim_ms"]) and res.target_ms == pytest.approx(3.2)
    assert res.aim_ms < 3.2  # the loss aims at the target minus the margin


def test_gradient_reaches_every_selector():
    torch.manual_seed(0)
    m = get_method("dynamicvit")
    model = m.build(TINY, m.token_plan(TINY, MethodConfig(LOCS, (1.0, 1.0, 1.0), {})))
    train = DynamicViTTraining(model).train()
    crit = LatencyAwareSparsityLoss(
        tiny_table(), target_ms=2.0, method="dynamicvit", locs=LOCS, shape="squared"
    )
    masks = train(torch.randn(4, 3, 32, 32)).masks
    assert [tuple(mk.shape) for mk in masks] == [(4, 16)] * 3
    crit(masks).backward()
    for s, pred in enumerate(model.score_predictor):
        g = pred.out_conv[4].weight.grad
        assert g is not None and g.abs().sum() > 0, f"no gradient into selector {s}"


def test_training_forward_is_the_static_model_when_nothing_is_dropped():
    m = get_method("dynamicvit")
    model = m.build(TINY, m.token_plan(TINY, MethodConfig(LOCS, (1.0, 1.0, 1.0), {}))).eval()
    train = DynamicViTTraining(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for p in model.score_predictor:
            p.out_conv[4].bias.copy_(torch.tensor([50.0, -50.0]))
        out = train(x)
        assert all(bool((mk == 1).all()) for mk in out.masks)
        torch.testing.assert_close(out.logits, model(x), atol=1e-4, rtol=1e-4)


def test_sample_keyed_noise_is_the_same_in_any_batch():
    """An image's Gumbel noise depends on its key, not on its batch or position."""
    m = get_method("dynamicvit")
    form = DynamicViTTraining(m.build(TINY, m.token_plan(TINY, MethodConfig(LOCS, (1.0,) * 3, {}))))
    like = torch.zeros(3, 16, 2)
    form.sample_keys = [7, 8, 9]
    a = form.gumbel(0, like)
    form.sample_keys = [9, 7]
    b = form.gumbel(0, like[:2])
    torch.testing.assert_close(b[0], a[2])
    torch.testing.assert_close(b[1], a[0])
    assert not torch.equal(form.gumbel(1, like[:2])[1], a[0])  # another stage, other noise


def test_softmax_with_policy_ignores_dropped_keys():
    attn = torch.randn(2, 1, 4, 4)
    policy = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]]).view(2, 4, 1)
    a = softmax_with_policy(attn, policy, eps=0.0)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 1, 4))
    assert a[0, 0, 0, 2] == 0 and a[1, 0, 3, 1] == 0
    assert a[0, 0, 2, 2] > 0


def test_a_nan_loss_stops_the_run_keeping_the_last_good_checkpoint(setup, tmp_path):
    """A weight made NaN during epoch 2 (through the progress hook): the next step's loss
    is NaN, the run stops in one line, and the file still holds epoch 1, whole."""
    from edgeprune.core.errors import EdgepruneError

    state = {}

    def poison(epoch, step, steps, line):
        if epoch == 1 and step == 0:
            with torch.no_grad():
                state["form"].model.head.weight.fill_(float("nan"))

    import edgeprune.training.finetune as ft

    real = ft._parts

    def spy(*a, **kw):
        parts = real(*a, **kw)
        state["form"] = parts.form
        return parts

    out = tmp_path / "nan.pth"
    ft._parts = spy
    try:
        with pytest.raises(EdgepruneError) as e:
            finetune_to_file(request(setup, epochs=3), out, progress=poison)
    finally:
        ft._parts = real
    assert "the loss became nan at epoch 2" in e.value.message
    ck = torch.load(out, weights_only=True)
    assert ck["resume"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_the_loops_token_terms_are_the_methods():
    """DynamicViT distils the kept tokens by their mean squared difference (its main.py,
    mse_token=True for DeiT), SPViT by KL: the loop's term equals each, computed here
    the way their loss classes do."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from edgeprune.core.distributed import World
    from edgeprune.training.forms import FormOutput, get_form
    from edgeprune.training.loop import token_distill

    torch.manual_seed(0)
    feats, t = torch.randn(3, 16, 8), torch.randn(3, 16, 8)
    mask = (torch.rand(3, 16) > 0.4).float()
    keep = mask.reshape(-1) > 0.5
    out = FormOutput(logits=torch.zeros(3, 4), features=feats, feature_mask=mask)
    for method, want in (
        ("dynamicvit", (feats.reshape(-1, 8)[keep] - t.reshape(-1, 8)[keep]).pow(2).mean()),
        ("spvit", F.kl_div(F.log_softmax(feats.reshape(-1, 8)[keep], -1),
                           F.log_softmax(t.reshape(-1, 8)[keep], -1),
                           reduction="batchmean", log_target=True)),
    ):  # fmt: skip
        p = SimpleNamespace(world=World(), form=get_form(method))
        torch.testing.assert_close(token_distill(p, out, t), want)
