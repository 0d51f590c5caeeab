"""EViT's training form against EViT's own training code (tests/golden/training/evit/,
written by tests/golden/training/make_evit.py from youweiliang/evit): the keep-rate
warm-up of ``helpers.adjust_keep_rate`` at every iteration of small runs, and the
training-mode forward of their ``evit.EViT`` at two keep rates: logits, the loss and
the gradients after backward. Then what the form does beyond the golden.

Tolerances: float32 on the CPU, the same operations up to their order (their attention
scales q·kᵀ after the product, ours q before it; the fused token is one MatMul here,
a gather and a sum there): logits and loss within 1e-5 (measured ~1e-6), gradients
within rtol 1e-4 plus 1e-6 of the tensor's largest entry. The keep rate is a float64
cosine of the same angle computed as a fraction of the run instead of iterations:
within 1e-12."""

import json
from pathlib import Path

import pytest
import torch

from edgeprune.core.arch import Arch
from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.training.forms.evit import (
    SHRINK_SPAN,
    SHRINK_START,
    EViTTraining,
    keep_rate_at,
    shrink_fractions,
)

HERE = Path(__file__).parent / "golden"
FIX = HERE / "training" / "evit"
META = json.loads((FIX / "meta.json").read_text())
ARCH = Arch("custom", 32, 2, 12, 16, 224, 4.0, 100)
LOCS = tuple(META["prune_locs"])


def static_model(rate: float = META["target_keep_rate"]):
    m = get_method("evit")
    model = m.build(ARCH, m.token_plan(ARCH, MethodConfig(LOCS, (rate,) * len(LOCS), {})))
    sd = torch.load(HERE / "evit" / "evit.pth", weights_only=True)["model"]
    model.load_state_dict(sd, strict=True)
    return model


@pytest.fixture(scope="module")
def batch():
    return torch.load(HERE / "input.pt", weights_only=True).float()


def test_keep_rate_warmup_equals_adjust_keep_rate():
    runs = torch.load(FIX / "keep_rates.pt", weights_only=True)
    assert len(runs) == 3
    for run in runs:
        epochs, iters = run["epochs"], run["iters_per_epoch"]
        start, span = shrink_fractions(run["shrink_start_epoch"], run["shrink_epochs"], epochs)
        for e, row in enumerate(run["rates"]):
            for i, theirs in enumerate(row):
                ours = keep_rate_at(
                    (e * iters + i) / (epochs * iters), run["base_keep_rate"], start, span
                )
                assert ours == pytest.approx(theirs, abs=1e-12), (run, e, i)
                assert (ours == 1) == (theirs == 1)  # no pruning at all before the shrink


def test_default_schedule_is_evits_released_one():
    assert shrink_fractions(10, 100, 300) == (SHRINK_START, SHRINK_SPAN)
    assert keep_rate_at(0.0, 0.7) == 1
    assert keep_rate_at(9.99 / 300, 0.7) == 1
    assert keep_rate_at(60 / 300, 0.7) == pytest.approx(0.85)  # half-way down the cosine
    assert keep_rate_at(110 / 300, 0.7) == 0.7
    assert keep_rate_at(1.0, 0.7) == 0.7
    assert keep_rate_at(0.0, 0.7, 0.0, 0.0) == 0.7  # finetune.sh: the target from the start


@pytest.mark.parametrize("case", ["target", "warmup"])
def test_training_forward_and_gradients_equal_evits(case, batch):
    g = torch.load(FIX / f"rate_{case}.pt", weights_only=True)
    form = EViTTraining(static_model()).train()
    form.set_keep_rates(g["keep_rate"])
    tokens = []  # what each block's attention sees (norm1 runs in both block forms)
    hooks = [
        b.norm1.register_forward_pre_hook(lambda _m, a: tokens.append(a[0].shape[1]))
        for b in form.model.blocks
    ]
    out = form(batch)
    for h in hooks:
        h.remove()
    assert out.masks == [] and out.aux == {}
    ce = torch.nn.functional.cross_entropy(out.logits, g["labels"])
    ce.backward()
    torch.testing.assert_close(out.logits, g["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(ce, g["ce"], rtol=0, atol=1e-5)
    params = dict(form.model.named_parameters())
    # the backward reaches every parameter (no selectors of their own: all backbone)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    assert len(g["grads"]) == 2 * ARCH.depth + 5
    for name, theirs in g["grads"].items():
        torch.testing.assert_close(
            params[name].grad,
            theirs,
            rtol=1e-4,
            atol=1e-6 * theirs.abs().max().item(),
            msg=lambda m, n=name: f"{n}: {m}",
        )
    # tokens really dropped: the tokens each block's attention sees, as theirs
    assert tokens == g["tokens_per_block"]


def test_warmup_case_reached_through_set_progress():
    run = torch.load(FIX / "keep_rates.pt", weights_only=True)[META["warmup_case"]["run"]]
    wc = META["warmup_case"]
    form = EViTTraining(
        static_model(),
        *shrink_fractions(run["shrink_start_epoch"], run["shrink_epochs"], run["epochs"]),
    )
    it = wc["epoch"] * run["iters_per_epoch"] + wc["iteration"]
    form.set_progress(it / (run["epochs"] * run["iters_per_epoch"]))
    want = META["cases"]["warmup"]["keep_rate"]
    assert form.keep_rates() == pytest.approx((want,) * 3, abs=1e-12)


def test_dense_before_the_shrink_static_model_at_the_target(batch):
    model = static_model()
    form = EViTTraining(model)
    assert form.keep_rates() == (1, 1, 1)  # progress 0: the warm-up has not started
    x = batch[:1]
    with torch.no_grad():
        dense = model.classify(torch.nn.Sequential(*model.blocks)(model.embed(x)))
        torch.testing.assert_close(form(x).logits, dense)
        form.set_progress(1.0)
        assert form.keep_rates() == (0.7, 0.7, 0.7)
        # at the target the training forward is the static (deployed) model
        torch.testing.assert_close(form(x).logits, model(x), rtol=0, atol=1e-5)


def test_read_schedule_is_the_budgets_and_builds():
    model = static_model()
    form = EViTTraining(model)
    cfg = form.read_schedule([])
    assert cfg == MethodConfig(LOCS, (0.7, 0.7, 0.7), {})
    m = get_method("evit")
    assert m.build(ARCH, m.token_plan(ARCH, cfg)).plan == model.plan
    assert EViTTraining.start_config(cfg) == cfg
    assert form.selector_parameters() == []
    assert not EViTTraining.learns_schedule and not EViTTraining.distills


def test_per_stage_targets_follow_one_cosine():
    m = get_method("evit")
    cfg = MethodConfig(LOCS, (0.9, 0.7, 0.5), {})
    form = EViTTraining(m.build(ARCH, m.token_plan(ARCH, cfg)), shrink_start=0.0, shrink_span=1.0)
    form.set_progress(0.5)
    assert form.keep_rates() == pytest.approx((0.95, 0.85, 0.75))
    form.set_progress(1.0)
    assert form.keep_rates() == (0.9, 0.7, 0.5)
    with pytest.raises(ValueError):
        shrink_fractions(1, 1, 0)
