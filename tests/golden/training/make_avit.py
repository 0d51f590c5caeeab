"""Write tests/golden/training/avit/: one training step of A-ViT as the authors' code runs it.

Not part of the test run (no ``test_`` prefix). Run by hand in the golden venv (see
tests/golden/make_golden.py; A-ViT's ``utils.get_distribution_target`` also needs scipy):

    /tmp/goldvenv/bin/pip install scipy
    /tmp/goldvenv/bin/python tests/golden/training/make_avit.py

NVlabs/A-ViT at the commit of ``make_golden.REPOS["avit"]`` is ``git archive``d from the
local mirror to a temporary folder and a subprocess imports from there:
``timm/models/act_vision_transformer.py`` (``VisionTransformer``, act_mode 4: the model
``main_act.py`` builds), ``losses.DistillationLoss`` around ``torch.nn.CrossEntropyLoss``
(``main_act.py``'s criterion without mixup, label smoothing or a teacher) and
``engine_act.train_one_epoch`` itself, run over a one-batch loader: it adds the ponder
loss (``ponder_token_scale`` × mean ``rho_token``) and the distribution prior
(``distr_prior_alpha`` × KLDivLoss(batchmean) of the clamped, normalised per-layer mean
halting scores to ``get_distribution_target()``, added only when > 0) to the CE, then
calls ``loss_scaler(loss, …)``: our scaler backpropagates and records the gradients
(no optimizer step). Nothing of their code is copied here; only tensors/JSON are written.

The model is make_golden's tiny A-ViT (embed 32, 2 heads, depth 12, 100 classes, the
authors' init then ``widen_``, seed 0), gates 10/10 (as tests/golden/avit: with random
weights the tiny gates 10/30 halt nothing), dropout and drop-path 0, train mode, the
README's weights ponder_token_scale 5e-4 and distr_prior_alpha 1e-3, the prior's default
target depth 8. Two runs of train_one_epoch on the same batch: one with the CE criterion
(grads of the full loss) and one whose criterion returns 0 (grads of ponder + prior
alone, which the CE's would otherwise swamp). Files: ``tiny-10-10.pth`` (state_dict),
``expected.pt`` (labels, loss terms, gradients, the prior's target, running tokens per
block, per-token depth), ``meta.json``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import make_golden as mg  # noqa: E402

OUT = HERE / "avit"
GATES = mg.AVIT_GATES
PONDER_TOKEN_SCALE, DISTR_PRIOR_ALPHA = 5e-4, 1e-3
LABELS = [3, 41, 77, 98]
# the backbone tensors whose gradients are stored (A-ViT has no selector parameters)
GRAD_KEYS = (
    [f"blocks.{i}.norm1.{p}" for i in range(mg.DEPTH) for p in ("weight", "bias")]
    + [f"blocks.{i}.mlp.fc2.{p}" for i in range(mg.DEPTH) for p in ("weight", "bias")]
    + ["head.weight", "head.bias", "cls_token", "pos_embed"]
)


class _Scaler:
    """engine_act's ``loss_scaler``: backward, then keep the gradients (no step)."""

    def __init__(self, model):
        self.model, self.loss, self.grads = model, None, None

    def __call__(self, loss, optimizer, clip_grad=None, parameters=None, create_graph=False):
        loss.backward(create_graph=create_graph)
        self.loss = loss.detach().clone()
        named = dict(self.model.named_parameters())
        self.grads = {k: named[k].grad.detach().clone() for k in GRAD_KEYS}


def _one_step(engine, model, criterion, x, y, args):
    import torch
    from torch import nn

    class Wrapper(nn.Module):  # train_one_epoch reads model.module (DistributedDataParallel)
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, img):
            return self.module(img)

    model.zero_grad(set_to_none=True)
    scaler = _Scaler(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = engine.train_one_epoch(
        Wrapper(model), criterion, [(x, y)], opt, torch.device("cpu"), 0, scaler, args=args
    )
    return stats, scaler


def gen(repo: Path) -> None:
    import torch

    torch.Tensor.cuda = lambda self, *a, **k: self  # their state is allocated with .cuda()
    torch.cuda.synchronize = lambda *a, **k: None
    sys.modules["cv2"] = types.SimpleNamespace(INTER_CUBIC=2)  # engine_act: visualisation only
    import engine_act
    from losses import DistillationLoss
    from timm.models.act_vision_transformer import VisionTransformer

    scale, center = GATES
    args = types.SimpleNamespace(
        act_mode=4,
        gate_scale=scale,
        gate_center=center,
        distr_prior_alpha=DISTR_PRIOR_ALPHA,
        ponder_token_scale=PONDER_TOKEN_SCALE,
    )
    torch.manual_seed(mg.SEED)
    m = VisionTransformer(
        embed_dim=mg.EMBED,
        depth=mg.DEPTH,
        num_heads=mg.HEADS,
        num_classes=mg.CLASSES,
        qkv_bias=True,
        drop_rate=0.0,
        drop_path_rate=0.0,
        args=args,
    )
    mg.widen_(m, mg.SEED)
    x, y = mg.load_input(), torch.tensor(LABELS)

    ce_values = []

    class CE(torch.nn.CrossEntropyLoss):
        def forward(self, out, target):
            v = super().forward(out, target)
            ce_values.append(v.detach().clone())
            return v

    class Zero(torch.nn.Module):
        def forward(self, out, target):
            return out.sum() * 0.0

    running = []
    for blk in m.blocks:
        orig = blk.forward_act

        def rec(inp, mask=None, _orig=orig):
            running.append((1 - mask).detach().clone())
            return _orig(inp, mask)

        blk.forward_act = rec

    full, sc_full = _one_step(
        engine_act, m, DistillationLoss(CE(), None, "none", 0.5, 1.0), x, y, args
    )
    expected = {
        "labels": y,
        "ce": ce_values[0],
        "ponder": torch.tensor(full["ponder_loss_token"]),
        "distr_prior": torch.tensor(full["distri_prior_loss"]),
        "loss": sc_full.loss,
        "grads": sc_full.grads,
        "distr_target": m.distr_target.detach().clone().float(),
        # B×depth×N: 1 = running before the block (their mask_token)
        "running": torch.stack(running, dim=1),
        "counter_token": m.counter_token.detach().clone(),
        "halting_score_layer": torch.stack([h.detach() for h in m.halting_score_layer]),
    }
    _, sc_aux = _one_step(
        engine_act, m, DistillationLoss(Zero(), None, "none", 0.5, 1.0), x, y, args
    )
    expected.update(aux_loss=sc_aux.loss, aux_grads=sc_aux.grads)
    save(m, expected, full)


def save(m, expected: dict, full: dict) -> None:
    import timm
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    name = f"tiny-{GATES[0]:g}-{GATES[1]:g}.pth"
    sd = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}
    torch.save({"model": sd}, OUT / name)
    torch.save(expected, OUT / "expected.pt")
    repo, commit = mg.REPOS["avit"]
    meta = {
        "repository": f"https://github.com/{repo}",
        "commit": commit,
        "files": [
            "timm/models/act_vision_transformer.py (VisionTransformer, act_mode 4)",
            "engine_act.py (train_one_epoch: ponder loss, distributional prior)",
            "losses.py (DistillationLoss, distillation 'none') + torch CrossEntropyLoss",
            "utils.py (get_distribution_target)",
        ],
        "checkpoint": name,
        "input": "../../input.pt (float16, read as float32)",
        "labels": LABELS,
        "embed_dim": mg.EMBED,
        "num_heads": mg.HEADS,
        "depth": mg.DEPTH,
        "num_classes": mg.CLASSES,
        "init": f"authors' init, then make_golden.widen_ (seed {mg.SEED})",
        "gate_scale": GATES[0],
        "gate_center": GATES[1],
        "ponder_token_scale": PONDER_TOKEN_SCALE,
        "distr_prior_alpha": DISTR_PRIOR_ALPHA,
        "distr_target_depth": 8,
        "mode": "train(), drop_rate 0, drop_path_rate 0, fp32 (autocast is CUDA-only)",
        "loss_terms": {
            "ce": float(expected["ce"]),
            "ponder": full["ponder_loss_token"],
            "distr_prior": full["distri_prior_loss"],
            "loss": full["loss"],
        },
        "mean_token_depth": float(expected["counter_token"].mean()),
        "torch": torch.__version__,
        "timm": "A-ViT's own copy (" + getattr(timm, "__version__", "?") + ")",
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def worker(repo: Path) -> None:
    import collections.abc

    sys.modules["torch._six"] = types.SimpleNamespace(
        inf=math.inf, string_classes=(str, bytes), container_abcs=collections.abc, int_classes=int
    )
    sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=None)
    sys.modules["torchprofile"] = types.SimpleNamespace(profile_macs=None)
    sys.path.insert(0, str(repo))
    os.chdir(tempfile.mkdtemp())
    gen(repo)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]))
        return
    repo, commit = mg.REPOS["avit"]
    git = ["git", "-C", str(Path("/work/.mirror") / repo.replace("/", "+") / "repo")]
    with tempfile.TemporaryDirectory() as tmp:
        names = subprocess.run(
            [*git, "ls-tree", "-r", "--name-only", commit],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        py = [n for n in names if n.endswith(".py")]
        archive = subprocess.run(
            [*git, "archive", commit, "--", *py], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        subprocess.run([sys.executable, __file__, "--worker", tmp], check=True)


if __name__ == "__main__":
    main()
