"""Write tests/golden/training/spvit/: SPViT's *training* step, by its own code.

Not part of the test run (no ``test_`` prefix). Run by hand in the golden venv
(see tests/golden/make_golden.py for how it is made):

    /tmp/goldvenv/bin/python tests/golden/training/make_spvit.py [--mirrors /work/.mirror]

The repository PeiyanFlying/SPViT is read from its git mirror at the commit pinned in
make_golden.REPOS; ``git archive`` copies its .py files to a temporary folder and a
subprocess imports them from there (``main_l2_vit_3keep_senet.py``'s modules). Nothing
of their code is copied here: only tensors and JSON.

The student: their ``vit_l2_3keep_senet.VisionTransformerDiffPruning`` (distill=True,
pruning_loc [3, 6, 9], token_ratio = main's KEEP_RATE [0.617, 0.369, 0.137]) in
**training mode**, with the weights of the inference fixture (tests/golden/spvit/
spvit.pth, the same tiny widened model), loaded strictly. Two cases:

* ``untied``: each head its own in_conv/out_conv (as the inference fixture: checks
  which channel slice goes with which head, and per-head gradients);
* ``tied``: the released structure (one in_conv/out_conv module listed H times, so the
  heads share their parameters and their gradients add up); head 0's weights.

The teacher: their ``VisionTransformerTeacher`` with the student's backbone weights
(the dense backbone, strict load of every teacher key). The loss: their
``losses_l2.DistillDiffPruningLoss`` as main builds it (clf_weight 1.0, keep_ratio
KEEP_RATE, ratio_weight 2.0 and distill_weight 0.5: --ratiow and --distillw defaults)
around ``torch.nn.CrossEntropyLoss`` (main's criterion without mixup and smoothing), on
fixed labels. The Gumbel noise is fixed: ``F.gumbel_softmax`` is torch's own, with
``Tensor.exponential_`` (its only random draw) reading stored Exp(1) samples, one
B×(196+s)×2 per stage s (the stage's patches and its s earlier package tokens).

Stored per case (``<case>.pt``): the noise, labels, the logits, the B×196 keep masks
their forward returns (``out_pred_prob``), each loss term as their class computes it
(``cls_loss``, the raw ratio sum ``ratio_loss`` = Σ_s (mask_s.mean() − KEEP_RATE_s)²,
``cls_kl``, ``token_kl``; ``total`` = their returned loss), and after ``backward()`` the
gradients of every ``score_predictor.*`` parameter (named as their model names them:
shared heads once) and of ``blocks.0``/``blocks.11`` ``attn.qkv.weight``.
meta.json: the commit, the smallest |keep − drop| Gumbel logit gap per case (how far the
hard decisions are from a tie).
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
import make_golden as mg  # noqa: E402  (tests/golden/make_golden.py: REPOS, shims, input)

LOCS, KEEP_RATE = [3, 6, 9], [0.617, 0.369, 0.137]
RATIO_WEIGHT, DISTILL_WEIGHT, CLF_WEIGHT = 2.0, 0.5, 1.0
NOISE_SEED = 7
GRAD_OTHERS = ("blocks.0.attn.qkv.weight", "blocks.11.attn.qkv.weight")
OUT = HERE / "spvit"


def labels():
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, mg.CLASSES, (mg.BATCH,), generator=g)


def noise():
    """Exp(1) samples, B×(196+s)×2 per stage s: F.gumbel_softmax's draws."""
    import torch

    g = torch.Generator().manual_seed(NOISE_SEED)
    return [torch.empty(mg.BATCH, 196 + s, 2).exponential_(generator=g) for s in range(3)]


def extract(method: str, mirrors: Path, dest: Path) -> None:
    """The .py files of the pinned commit of ``method``'s repository into ``dest``."""
    repo, commit = mg.REPOS[method]
    git = ["git", "-C", str(mirrors / repo.replace("/", "+") / "repo")]
    names = subprocess.run(
        [*git, "ls-tree", "-r", "--name-only", commit], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    py = [n for n in names if n.endswith(".py")]
    archive = subprocess.run([*git, "archive", commit, "--", *py], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def student(tied: bool):
    """Their model in training mode with the inference fixture's weights."""
    import copy

    import torch
    import vit_l2_3keep_senet as spv
    from torch import nn

    m = spv.VisionTransformerDiffPruning(
        embed_dim=mg.EMBED,
        depth=mg.DEPTH,
        num_heads=mg.HEADS,
        num_classes=mg.CLASSES,
        qkv_bias=True,
        pruning_loc=LOCS,
        token_ratio=KEEP_RATE,
        distill=True,
    )
    sd = torch.load(GOLDEN / "spvit" / "spvit.pth", weights_only=True)["model"]
    if tied:  # the released structure: head 0's modules listed H times; its weights
        for k in list(sd):
            for part in ("in_conv", "out_conv"):
                for h in range(1, mg.HEADS):
                    tag = f".{part}.{h}."
                    if tag in k:
                        sd[k] = sd[k.replace(tag, f".{part}.0.")].clone()
    else:  # each head its own modules (as the inference fixture)
        for pred in m.score_predictor:
            pred.in_conv = nn.ModuleList(copy.deepcopy(pred.in_conv[0]) for _ in range(mg.HEADS))
            pred.out_conv = nn.ModuleList(copy.deepcopy(pred.out_conv[0]) for _ in range(mg.HEADS))
    m.load_state_dict(sd, strict=True)
    return m.train(), sd


def teacher(sd):
    import vit_l2_3keep_senet as spv

    t = spv.VisionTransformerTeacher(
        embed_dim=mg.EMBED,
        depth=mg.DEPTH,
        num_heads=mg.HEADS,
        num_classes=mg.CLASSES,
        qkv_bias=True,
    )
    dense = {k: v for k, v in sd.items() if not k.startswith("score_predictor.")}
    t.load_state_dict(dense, strict=True)
    return t.eval()


def fix_noise(draws: list, gaps: list) -> None:
    """F.gumbel_softmax as torch has it, its Exp(1) draw read from ``draws`` (in order);
    the smallest |keep − drop| of logits + Gumbel noise recorded into ``gaps``."""
    import types

    import torch
    import vit_l2_3keep_senet as spv

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
    public = {k: getattr(spv.F, k) for k in dir(spv.F) if not k.startswith("__")}
    ns = types.SimpleNamespace(**public)
    ns.gumbel_softmax = gumbel_softmax
    spv.F = ns


def run_case(case: str) -> float:
    import torch
    from losses_l2 import DistillDiffPruningLoss

    torch.manual_seed(mg.SEED)
    m, sd = student(tied=case == "tied")
    crit = DistillDiffPruningLoss(
        teacher(sd),
        torch.nn.CrossEntropyLoss(),
        clf_weight=CLF_WEIGHT,
        keep_ratio=KEEP_RATE,
        ratio_weight=RATIO_WEIGHT,
        distill_weight=DISTILL_WEIGHT,
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
    total = crit(x, out, y)
    total.backward()
    params = dict(m.named_parameters())
    grads = {
        k: p.grad.detach().clone()
        for k, p in params.items()
        if k.startswith("score_predictor.") or k in GRAD_OTHERS
    }
    losses = {
        "cls_loss": crit.cls_loss,
        "ratio_loss": crit.ratio_loss,
        "cls_kl": crit.cls_distill_loss,
        "token_kl": crit.token_distill_loss,
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
    gaps = {case: run_case(case) for case in ("untied", "tied")}
    repo_name, commit = mg.REPOS["spvit"]
    meta = {
        "repository": f"https://github.com/{repo_name}",
        "commit": commit,
        "official_files": ["vit_l2_3keep_senet.py", "losses_l2.py"],
        "classes": [
            "VisionTransformerDiffPruning (training mode, distill=True)",
            "VisionTransformerTeacher",
            "DistillDiffPruningLoss",
        ],
        "weights": "../../spvit/spvit.pth (the inference fixture), strict load",
        "input": "../../input.pt (float16, read as float32)",
        "prune_locs": LOCS,
        "keep_rate": KEEP_RATE,
        "ratio_weight": RATIO_WEIGHT,
        "distill_weight": DISTILL_WEIGHT,
        "clf_weight": CLF_WEIGHT,
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
        mg.GEN["spvit_training"] = gen
        mg.worker("spvit_training", Path(a.worker))
        return
    with tempfile.TemporaryDirectory() as tmp:
        extract("spvit", Path(a.mirrors), Path(tmp))
        subprocess.run([sys.executable, __file__, "--worker", tmp], check=True)


if __name__ == "__main__":
    main()
