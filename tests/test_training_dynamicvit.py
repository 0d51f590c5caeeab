"""DynamicViT's training form against DynamicViT's own training code
(tests/golden/training/dynamicvit, written by tests/golden/training/make_dynamicvit.py
with the released ``models/dyvit.py`` ``VisionTransformerDiffPruning`` in training mode,
its ``VisionTransformerTeacher`` and ``losses.DistillDiffPruningLoss_dynamic``, on the
same batch with the same Gumbel noise).

Two loss set-ups, both by their class: ``deit`` as main.py builds it for DeiT
(``mse_token=True``, ``dynamic`` False: the ratio term squares each image's mean keep,
``loss.ratio_mse``) and ``dynamic`` (``dynamic=True``: the batch mean squared, as
``spvit.ratio_loss``; ``mse_token=False``: KL of the kept tokens, ``distillation_losses``
and the training loop's term)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeprune.core.arch import Arch
from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.training.forms import DynamicViTTraining, distillation_losses, teacher_forward
from edgeprune.training.forms.spvit import ratio_loss as batch_ratio_loss
from edgeprune.training.loss import ratio_mse

GOLDEN = Path(__file__).parent / "golden"
FIXTURE = GOLDEN / "training" / "dynamicvit"
META = json.loads((FIXTURE / "meta.json").read_text())
ARCH = Arch("custom", embed_dim=32, num_heads=2, num_classes=100)
# As test_training_spvit (the same structure): float32 sums in another order than
# theirs (attention scale before/after q·kᵀ; the first stage's blocks with plain softmax
# where theirs runs softmax_with_policy on an all-ones policy, eps/N terms ~1e-6
# relative). Measured: logits within 2e-6, loss terms within 7e-6 relative (cls_kl,
# ~8e-3, is a difference of near-equal terms), gradients within 7e-7 of their
# selector's largest element (entries that cancel to ~1e-3 of their terms are off by up
# to 2e-2 relative): so rtol 1e-4 and, for gradients, an atol of 1e-5 × the largest
# gradient of the selector (or of the weight). The hard decisions are exact (their
# smallest keep − drop gap with noise is ≥ 3e-4, meta.json): masks compared equal.
RTOL, ATOL, GRAD_ATOL = 1e-4, 1e-6, 1e-5


def golden_form() -> DynamicViTTraining:
    dyvit = get_method("dynamicvit")
    cfg = MethodConfig(tuple(META["prune_locs"]), tuple(META["keep_rate"]))
    model = dyvit.build(ARCH, dyvit.token_plan(ARCH, cfg))
    sd = torch.load(GOLDEN / "dynamicvit" / "dynamicvit.pth", weights_only=True)["model"]
    model.load_state_dict(sd, strict=True)
    return DynamicViTTraining(model.train())


def mse_token(feats, mask, t_feats):
    """Their ``mse_token=True`` term: the mean squared difference over the kept tokens."""
    keep = mask.reshape(-1) > 0.5
    c = feats.shape[-1]
    return (feats.reshape(-1, c)[keep] - t_feats.reshape(-1, c)[keep]).pow(2).mean()


def our_step(form: DynamicViTTraining, ref: dict, case: str):
    x = torch.load(GOLDEN / "input.pt", weights_only=True).float()
    out = form(x, noise=[-e.log() for e in ref["noise"]])
    with torch.no_grad():
        t_logits, t_feats = teacher_forward(form.model, x)
    ce = F.cross_entropy(out.logits, ref["labels"])
    cls_kl, tok_kl = distillation_losses(
        out.logits, out.features, out.feature_mask, t_logits, t_feats
    )
    dynamic = META["cases"][case]["dynamic"]
    ratio = (batch_ratio_loss if dynamic else ratio_mse)(out.masks, META["keep_rate"])
    tok = mse_token(out.features, out.feature_mask, t_feats) if case == "deit" else tok_kl
    total = (
        META["clf_weight"] * ce
        + META["ratio_weight"] * ratio
        + META["distill_weight"] * (cls_kl + tok)
    )
    total.backward()
    # their ratio_loss is the raw sum over the stages (they divide by len(pruning_loc))
    terms = {"cls_loss": ce, "ratio_loss": ratio * 3, "cls_kl": cls_kl, "token_distill": tok}
    return out, {**terms, "total": total}


@pytest.mark.parametrize("case", ["deit", "dynamic"])
def test_training_step_equals_released_dynamicvit(case):
    ref = torch.load(FIXTURE / f"{case}.pt", weights_only=True)
    form = golden_form()
    out, losses = our_step(form, ref, case)
    for got, want in zip(out.masks, ref["masks"], strict=True):
        assert torch.equal(got.detach(), want)
    torch.testing.assert_close(out.logits.detach(), ref["logits"], rtol=RTOL, atol=ATOL)
    for name, want in ref["losses"].items():
        assert float(losses[name].detach()) == pytest.approx(want, rel=RTOL, abs=ATOL), name
    params = dict(form.model.named_parameters())
    selectors = {k for k in params if k.startswith("score_predictor.")}
    assert selectors == {k for k in ref["grads"] if k.startswith("score_predictor.")}
    for name, want in ref["grads"].items():
        got = params[name].grad
        assert got is not None and got.abs().sum() > 0, name
        group = ".".join(name.split(".")[:2]) + "." if name in selectors else name
        scale = max(g.abs().max() for k, g in ref["grads"].items() if k.startswith(group))
        torch.testing.assert_close(got, want, rtol=RTOL, atol=GRAD_ATOL * float(scale), msg=name)


def test_given_noise_is_the_sampled_path():
    """The explicit noise takes the same path as ``sample_keys`` noise (``gumbel``)."""
    form = golden_form()
    x = torch.randn(2, 3, 224, 224)
    form.sample_keys = [3, 5]
    noise = [form.gumbel(s, torch.empty(2, 196, 2)) for s in range(3)]
    with torch.no_grad():
        keyed, given = form(x), form(x, noise=noise)
    for a, b in zip(keyed.masks, given.masks, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(keyed.logits, given.logits)
