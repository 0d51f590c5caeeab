"""ToMe's training form against ToMe's own patched model trained (tests/golden/training/
tome/, written by tests/golden/training/make_tome.py from facebookresearch/ToMe's
``tome.patch.timm`` on timm 0.4.12's VisionTransformer): the training-mode forward at
r = 8 and r = 16 (ToMe's clamp acting in the last blocks), with and without proportional
attention: logits, the loss and the gradients after backward. Then what the form does
beyond the golden.

Tolerances: float32 on the CPU, the same operations up to their order (the merge is a
one-hot MatMul here, ``scatter_reduce`` there; the keys summed over heads, not
averaged, before the cosine): logits and loss within 1e-5 (measured ~1e-6), gradients
within rtol 1e-4 plus 1e-6 of the tensor's largest entry. The smallest margins of the
matching decisions (meta.json: ≥ 1.5e-5) are far above those rounding differences."""

import json
from pathlib import Path

import pytest
import torch

from edgeprune.core.arch import Arch
from edgeprune.core.methods import get_method
from edgeprune.training.forms.tome import ToMeTraining

HERE = Path(__file__).parent / "golden"
FIX = HERE / "training" / "tome"
META = json.loads((FIX / "meta.json").read_text())
ARCH = Arch("custom", 32, 2, 12, 16, 224, 4.0, 100)


def static_model(r: int):
    m = get_method("tome")
    model = m.build(ARCH, m.token_plan(ARCH, m.config_for(r, ARCH)))
    sd = torch.load(HERE / "tome" / "tome.pth", weights_only=True)["model"]
    model.load_state_dict(sd, strict=True)
    return model


@pytest.fixture(scope="module")
def batch():
    return torch.load(HERE / "input.pt", weights_only=True).float()


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_training_forward_and_gradients_equal_tomes(case, batch):
    g = torch.load(FIX / f"{case}.pt", weights_only=True)
    form = ToMeTraining(static_model(g["r"]), prop_attn=g["prop_attn"]).train()
    tokens = []  # what each block's attention sees
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
    assert tokens == g["tokens_per_block"]
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


def test_training_forward_is_the_static_model(batch):
    model = static_model(8)
    with torch.no_grad():
        torch.testing.assert_close(
            ToMeTraining(model)(batch[:1]).logits, model(batch[:1]), rtol=0, atol=1e-5
        )


def test_read_schedule_is_the_config_and_builds():
    model = static_model(16)
    form = ToMeTraining(model)
    cfg = form.read_schedule([])
    m = get_method("tome")
    assert cfg == m.config_for(16, ARCH)
    assert m.build(ARCH, m.token_plan(ARCH, cfg)).plan == model.plan
    assert ToMeTraining.start_config(cfg) == cfg
    assert form.selector_parameters() == []
    assert not ToMeTraining.learns_schedule and not ToMeTraining.distills
    form.set_progress(0.5)  # nothing moves: r is fixed
    assert form.read_schedule([]) == cfg
