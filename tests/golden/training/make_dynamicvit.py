"""Write tests/golden/training/dynamicvit/: DynamicViT's *training* step, by its own code.

Not part of the test run (no ``test_`` prefix). Run by hand in the golden venv
(see tests/golden/make_golden.py for how it is made):

    /tmp/goldvenv/bin/python tests/golden/training/make_dynamicvit.py [--mirrors /work/.mirror]

The repository raoyongming/DynamicViT is read from its git mirror at the commit pinned
in make_golden.REPOS; ``git archive`` copies its .py files to a temporary folder and a
subprocess imports them from there. Nothing of their code is copied here: only tensors
and JSON.

The student: their ``models/dyvit.py`` ``VisionTransformerDiffPruning`` (distill=True,
pruning_loc [3, 6, 9], token_ratio = main's KEEP_RATE [r, r², r³], r = 0.7) in
**training mode**, with the weights of the inference fixture (tests/golden/dynamicvit/
dynamicvit.pth), loaded strictly. The teacher: their ``VisionTransformerTeacher`` with
the student's backbone weights (strict load of every teacher key). The loss: their
``losses.DistillDiffPruningLoss_dynamic`` around ``torch.nn.CrossEntropyLoss`` (main's
criterion without mixup and smoothing), clf_weight 1.0, ratio_weight 2.0, distill_weight
0.5, keep_ratio KEEP_RATE, on fixed labels, in two cases:

* ``deit``: as main.py builds it for the DeiT models (``mse_token=True``; ``dynamic``
  left at its default False: the ratio term is per image, then averaged);
* ``dynamic``: ``dynamic=True`` (the ratio term on the batch mean) and
  ``mse_token=False`` (KL of the kept tokens, as main.py sets it for LV-ViT).

The Gumbel noise is fixed: ``F.gumbel_softmax`` is torch's own, with
``Tensor.exponential_`` (its only random draw) reading stored Exp(1) samples, one
B×196×2 per stage.

Stored per case (``<case>.pt``): the noise, labels, the logits, the B×196 keep masks
their forward returns (``out_pred_prob``), each loss term as their class computes it
(``cls_loss``, the raw ratio sum ``ratio_loss`` over the stages, ``cls_kl``,
``token_distill`` (MSE or KL as the case says); ``total`` = their returned loss), and
after ``backward()`` the gradients of every ``score_predictor.*`` parameter and of
``blocks.0``/``blocks.11`` ``attn.qkv.weight``. meta.json: the commit, the smallest
|keep − drop| Gumbel logit gap (how far the hard decisions are from a tie).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent
sys.path.insert(0, str(GOLDEN))
sys.path.insert(0, str(HERE))
import make_golden as mg  # noqa: E402  (tests/golden/make_golden.py: REPOS, shims, input)
from make_spvit import extract, labels  # noqa: E402  (the same labels as SPViT's)

LOCS, BASE_RATE = [3, 6, 9], 0.7
KEEP_RATE = [BASE_RATE, BASE_RATE**2, BASE_RATE**3]
RATIO_WEIGHT, DISTILL_WEIGHT, CLF_WEIGHT = 2.0, 0.5, 1.0
CASES = {
    "deit": {"dynamic": False, "mse_token": True},
    "dynamic": {"dynamic": True, "mse_token": False},
}
NOISE_SEED = 7
GRAD_OTHERS = ("blocks.0.attn.qkv.weight", "blocks.11.attn.qkv.weight")
OUT = HERE / "dynamicvit"


def noise():
    """Exp(1) samples, B×196×2 per stage: F.gumbel_softmax's draws."""
    import torch

    g = torch.Generator().manual_seed(NOISE_SEED)
    return [torch.empty(mg.BATCH, 196, 2).exponential_(generator=g) for _ in LOCS]


def models():
    """Their student (training mode, the inference fixture's weights) and teacher."""
    import torch
    from models.dyvit import VisionTransformerDiffPruning, VisionTransformerTeacher

    kw = dict(embed_dim=mg.EMBED, depth=mg.DEPTH, num_heads=mg.HEADS, num_classes=mg.CLASSES)
    m = VisionTransformerDiffPruning(
        **kw, qkv_bias=True, pruning_loc=LOCS, token_ratio=KEEP_RATE, distill=True
    )
    sd = torch.load(GOLDEN / "dynamicvit" / "dynamicvit.pth", weights_only=True)["model"]
    m.load_state_dict(sd, strict=True)
    t = VisionTransformerTeacher(**kw, qkv_bias=True)
    t.load_state_dict({k: v for k, v in sd.items() if not k.startswith("score_predictor.")})
    return m.train(), t.eval()


def fix_noise(draws: list, gaps: list) -> None:
    """F.gumbel_softmax as torch has it, its Exp(1) draw read from ``draws`` (in order);
    the smallest |keep − drop| of logits + Gumbel noise recorded into ``gaps``."""
    import types

    import models.dyvit as dyv
    import torch

    queue = list(draws)
    real = torch.nn.functional.gumbel_softmax

    def exponential_(self, *a, **k):
        e = queue.pop(0)
        assert e.shape == self.shape, (e.shape, self.shape)
        return self.copy_(e)

    def gumbel_softmax(logits, tau=1, hard=False, **kw):
        y = logits.detach() - queue[0].log()
        gaps.append(float((y[..., 0] - y[..., 1]).abs().min()))
        return real(logits, tau=tau, hard=hard, **kw)

    torch.Tensor.exponential_ = exponential_
    public = {k: getattr(torch.nn.functional, k) for k in dir(torch.nn.functional)}
    ns = types.SimpleNamespace(**{k: v for k, v in public.items() if not k.startswith("__")})
    ns.gumbel_softmax = gumbel_softmax
    dyv.F = ns


def run_case(case: str) -> float:
    import torch
    from losses import DistillDiffPruningLoss_dynamic

    torch.manual_seed(mg.SEED)
    m, t = models()
    crit = DistillDiffPruningLoss_dynamic(
        t,
        torch.nn.CrossEntropyLoss(),
        clf_weight=CLF_WEIGHT,
        keep_ratio=KEEP_RATE,
        ratio_weight=RATIO_WEIGHT,
        distill_weight=DISTILL_WEIGHT,
        pruning_loc=LOCS,
        **CASES[case],
    )
    draws, gaps = noise(), []
    real_exp = torch.Tensor.exponential_
    fix_noise(draws, gaps)
    x, y = mg.load_input(), labels()
    try:
        out = m(x)
    finally:
        torch.Tensor.exponential_ = real_exp
    assert len(gaps) == 3
    logits, _feats, _mask, masks = out
    total, _parts = crit(x, out, y)  # (loss, loss_part) as engine.py unpacks it
    total.backward()
    grads = {
        k: p.grad.detach().clone()
        for k, p in m.named_parameters()
        if k.startswith("score_predictor.") or k in GRAD_OTHERS
    }
    losses = {
        "cls_loss": crit.cls_loss,
        "ratio_loss": crit.ratio_loss,
        "cls_kl": crit.cls_distill_loss,
        "token_distill": crit.token_distill_loss,
        "total": float(total),
    }
    torch.save(
        {
            "noise": draws,
            "labels": y,
            "logits": logits.detach().clone(),
            "masks": [mk.detach().clone() for mk in masks],
            "losses": losses,
            "grads": grads,
        },
        OUT / f"{case}.pt",
    )
    print(case, losses, [float(mk.mean()) for mk in masks], "gap", min(gaps))
    return min(gaps)


def gen(repo: Path) -> None:
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    gaps = {case: run_case(case) for case in CASES}
    repo_name, commit = mg.REPOS["dynamicvit"]
    meta = {
        "repository": f"https://github.com/{repo_name}",
        "commit": commit,
        "official_files": ["models/dyvit.py", "losses.py"],
        "classes": [
            "VisionTransformerDiffPruning (training mode, distill=True)",
            "VisionTransformerTeacher",
            "DistillDiffPruningLoss_dynamic",
        ],
        "weights": "../../dynamicvit/dynamicvit.pth (the inference fixture), strict load",
        "input": "../../input.pt (float16, read as float32)",
        "prune_locs": LOCS,
        "keep_rate": KEEP_RATE,
        "ratio_weight": RATIO_WEIGHT,
        "distill_weight": DISTILL_WEIGHT,
        "clf_weight": CLF_WEIGHT,
        "cases": CASES,
        "base_criterion": "torch.nn.CrossEntropyLoss (main without mixup/smoothing)",
        "noise": "Tensor.exponential_ reads <case>.pt['noise'][s] in F.gumbel_softmax",
        "min_gumbel_gap": gaps,
        "torch": torch.__version__,
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirrors", default="/work/.mirror")
    ap.add_argument("--worker", default=None)
    a = ap.parse_args()
    if a.worker:
        mg.GEN["dynamicvit_training"] = gen
        mg.worker("dynamicvit_training", Path(a.worker))
        return
    with tempfile.TemporaryDirectory() as tmp:
        extract("dynamicvit", Path(a.mirrors), Path(tmp))
        subprocess.run([sys.executable, __file__, "--worker", tmp], check=True)


if __name__ == "__main__":
    main()
