"""A-ViT's training form against A-ViT's own training code (tests/golden/training/avit/,
written by tests/golden/training/make_avit.py from NVlabs/A-ViT: the act_mode-4
``VisionTransformer`` of ``timm/models/act_vision_transformer.py`` in train mode and
``engine_act.train_one_epoch``'s CE + ponder loss + distributional prior, one batch):
each loss term, the gradients of the full loss and of the two A-ViT terms alone (which
the CE's would swamp), the prior's target and the running tokens. Then what the form
does beyond the golden.

Tolerances: float32 on the CPU, the same operations up to their order (their attention
scales q·kᵀ after the product, ours q before it; with head dim 16 the scale is 1/4, so
both are exact and the fixture matches bit for bit here): loss terms within rtol 1e-5,
gradients within rtol 1e-4 plus 1e-6 of the tensor's largest entry, room for another
BLAS's summation order."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeprune.core.arch import Arch
from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.training.forms import get_form
from edgeprune.training.forms.avit import (
    AViTTraining,
    distribution_target,
    target_halting_depth,
)

HERE = Path(__file__).parent / "golden"
FIX = HERE / "training" / "avit"
META = json.loads((FIX / "meta.json").read_text())
ARCH = Arch("custom", 32, 2, 12, 16, 224, 4.0, 100)
LOCS = (3, 6, 9)
GATES = {"gate_scale": META["gate_scale"], "gate_center": META["gate_center"]}


def static_model(cfg: MethodConfig):
    m = get_method("avit")
    model = m.build(ARCH, m.token_plan(ARCH, cfg))
    sd = torch.load(FIX / META["checkpoint"], weights_only=True)["model"]
    model.load_state_dict(sd, strict=True)
    return model


def start_form(target_depth=None) -> AViTTraining:
    budget = MethodConfig(LOCS, (0.7, 0.49, 0.343), dict(GATES))
    return AViTTraining(static_model(AViTTraining.start_config(budget)), target_depth)


@pytest.fixture(scope="module")
def golden():
    x = torch.load(HERE / "input.pt", weights_only=True).float()
    return x, torch.load(FIX / "expected.pt", weights_only=True)


def assert_grads(model, expected: dict) -> None:
    named = dict(model.named_parameters())
    for k, theirs in expected.items():
        g = named[k].grad
        ours = torch.zeros_like(theirs) if g is None else g
        scale = max(theirs.abs().max().item(), 1e-12)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6 * scale, msg=k)


def test_loss_terms_and_gradients_equal_engine_act(golden):
    x, exp = golden
    form = start_form(target_depth=META["distr_target_depth"])
    out = form(x)
    ce = F.cross_entropy(out.logits, exp["labels"])
    assert sorted(out.aux) == ["distr_prior", "ponder"]
    for name, ours in (("ce", ce), *out.aux.items()):
        assert ours.item() == pytest.approx(exp[name].item(), rel=1e-5), name
    loss = ce + sum(out.aux.values())
    assert loss.item() == pytest.approx(exp["loss"].item(), rel=1e-5)
    loss.backward()
    assert_grads(form.model, exp["grads"])


def test_ponder_and_prior_gradients_alone_equal_engine_act(golden):
    x, exp = golden
    form = start_form(target_depth=META["distr_target_depth"])
    out = form(x)
    aux = sum(out.aux.values())
    assert aux.item() == pytest.approx(exp["aux_loss"].item(), rel=1e-5)
    aux.backward()
    assert form.model.head.weight.grad is None  # the halting never reads the head
    assert_grads(form.model, exp["aux_grads"])


def test_prior_target_equals_get_distribution_target(golden):
    _, exp = golden
    ours = distribution_target(ARCH.depth, float(META["distr_target_depth"]))
    torch.testing.assert_close(ours, exp["distr_target"], rtol=1e-6, atol=0.0)


def test_target_depth_from_the_budget():
    # dense: every patch runs 12 blocks, halting at block index 11
    assert target_halting_depth(ARCH, LOCS, (1.0, 1.0, 1.0)) == 11.0
    # 3 blocks at 196 patches, 3 at 98, 3 at 49, 3 at round(24.5) = 24
    want = (3 * 196 + 3 * 98 + 3 * 49 + 3 * 24) / 196 - 1
    assert target_halting_depth(ARCH, LOCS, (0.5, 0.25, 0.125)) == pytest.approx(want)
    # start_config carries the budget's ratios: the form aims at the budget's depth
    form = start_form()
    assert form.target_depth == pytest.approx(target_halting_depth(ARCH, LOCS, (0.7, 0.49, 0.343)))
    # a model built at the budget itself reads its own ratios
    budget = MethodConfig(LOCS, (0.5, 0.25, 0.125), dict(GATES))
    assert AViTTraining(static_model(budget)).target_depth == pytest.approx(want)


def test_start_config_is_the_dense_model_with_gates_at_the_budget_locations():
    budget = MethodConfig(LOCS, (0.7, 0.49, 0.343), {**GATES, "schedule": "given"})
    cfg = AViTTraining.start_config(budget)
    assert cfg.prune_locs == LOCS and cfg.keep_ratios == (1.0, 1.0, 1.0)
    assert {k: cfg.options[k] for k in GATES} == GATES
    assert cfg.options["target_keep"] == (0.7, 0.49, 0.343)
    plan = get_method("avit").token_plan(ARCH, cfg)
    assert plan.selectors == () and set(plan.attn_tokens) == {ARCH.num_tokens}
    form = AViTTraining(static_model(cfg))
    assert form.selector_parameters() == [] and not AViTTraining.distills
    AViTTraining.init_selectors_(form.model, seed=0)  # nothing to initialise
    assert get_form("avit") is AViTTraining


def test_masks_are_their_running_tokens_and_backward_reaches_the_backbone(golden):
    x, exp = golden
    form = start_form()
    out = form(x[:2])
    assert len(out.masks) == len(LOCS)
    for mask, b in zip(out.masks, LOCS, strict=True):
        assert mask.shape == (2, ARCH.num_patches)
        assert torch.equal(mask.detach(), exp["running"][:2, b, 1:])
    sum(mk.sum() for mk in out.masks).backward()
    named = dict(form.model.named_parameters())
    # the masks before block 9 depend on blocks 0…8 through the halting scores
    for k in ("blocks.0.norm1.weight", "blocks.8.mlp.fc2.weight", "cls_token"):
        assert named[k].grad is not None and named[k].grad.abs().sum() > 0, k
    assert named["blocks.9.mlp.fc2.weight"].grad is None
    assert named["head.weight"].grad is None


def test_one_image_has_no_prior_as_in_engine_act(golden):
    x, _ = golden
    out = start_form()(x[:1])
    assert out.aux["distr_prior"].item() == 0.0
    assert torch.isfinite(out.aux["ponder"]) and out.aux["ponder"].item() > 0


def test_read_schedule_is_the_calibration_at_the_locations(golden):
    x, exp = golden
    form = start_form()
    cfg = form.read_schedule([x[:2], x[2:]], quantile=1.0)
    # quantile 1: the most running tokens over the images, before each location
    running = exp["running"].sum(-1)  # B×depth, CLS included
    want = tuple((running[:, b].max().item() - 1) / ARCH.num_patches for b in LOCS)
    assert cfg.prune_locs == LOCS and cfg.keep_ratios == pytest.approx(want)
    assert {k: cfg.options[k] for k in GATES} == GATES
    assert "target_keep" not in cfg.options
    # the default reads the median image's counts: never more than every image's
    median = form.read_schedule([x[:2], x[2:]])
    assert all(m <= w + 1e-12 for m, w in zip(median.keep_ratios, want, strict=True))
    model = static_model(cfg)  # the deployed static plan builds and runs
    # 137 tokens from block 3, 89 from block 6; block 9 keeps the same 89 (no stage)
    assert [(s.block, s.tokens_out) for s in model.plan.selectors] == [(3, 137), (6, 89)]
    with torch.no_grad():
        assert model(x[:1]).shape == (1, ARCH.num_classes)
