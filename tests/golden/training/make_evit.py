"""Write tests/golden/training/evit/: EViT's *training* computations, by its own code.

Not part of the test run (no ``test_`` prefix). Run by hand in the golden venv
(see tests/golden/make_golden.py for how it is made):

    /tmp/goldvenv/bin/python tests/golden/training/make_evit.py [--mirrors /work/.mirror]

The repository youweiliang/evit is read from its git mirror at the commit pinned in
make_golden.REPOS; ``git archive`` copies its .py files to a temporary folder and a
subprocess imports them from there. Nothing of their code is copied here: only tensors
and JSON. What is stored:

* ``keep_rates.pt``: ``helpers.adjust_keep_rate`` at every iteration of small runs
  (epochs, iterations per epoch, shrink_start_epoch, shrink_epochs, base_keep_rate),
  called as ``engine.train_one_epoch`` calls it (it = epoch · iters + i);
* ``rate_<r>.pt`` for two keep rates (the target 0.7 and a rate of the warm-up, from
  their function): their ``evit.EViT`` (fuse_token=True, keep_rate 0.7 at blocks 3, 6,
  9 as ``deit_small_patch16_shrink_base`` builds it) in **training mode** (dropout and
  drop path 0, as the defaults) on tests/golden/input.pt, ``model(x, keep_rate)`` as
  the training loop calls it; the loss by their ``losses.DistillationLoss`` around
  ``torch.nn.CrossEntropyLoss`` with distillation 'none' (main.py's criterion without
  mixup and label smoothing) on fixed labels; after ``backward()``: the gradients of
  every block's ``attn.qkv.weight`` and ``mlp.fc1.weight``, of the patch embedding,
  ``pos_embed``, ``cls_token`` and the head; the tokens per block; the smallest gap
  between the last kept and the first dropped CLS attention (``min_keep_margin``).

The weights are the inference fixture's (tests/golden/evit/evit.pth, the same tiny
widened model), loaded strictly into their class: no second copy is stored.
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

LOCS, BASE = (3, 6, 9), 0.7
# (epochs, iterations per epoch, shrink_start_epoch, shrink_epochs, base_keep_rate):
# run_code.sh's schedule scaled down, one ending mid-run, finetune.sh's (no warm-up)
RATE_RUNS = ((30, 7, 1, 10, 0.7), (12, 5, 2, 5, 0.5), (10, 3, 0, 0, 0.7))
# the warm-up rate of the second stored forward: run 0, epoch 4, iteration 3
MID = (0, 4, 3)
GRAD_KEYS = ("attn.qkv.weight", "mlp.fc1.weight")
GRAD_OTHERS = ("patch_embed.proj.weight", "pos_embed", "cls_token", "head.weight", "head.bias")


def labels():
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, mg.CLASSES, (mg.BATCH,), generator=g)


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


def rate_grid() -> list[dict]:
    from helpers import adjust_keep_rate

    runs = []
    for epochs, iters, start, shrink, base in RATE_RUNS:
        rates = [
            [
                adjust_keep_rate(
                    e * iters + i,
                    e,
                    warmup_epochs=start,
                    total_epochs=start + shrink,
                    ITERS_PER_EPOCH=iters,
                    base_keep_rate=base,
                )
                for i in range(iters)
            ]
            for e in range(epochs)
        ]
        runs.append(
            {
                "epochs": epochs,
                "iters_per_epoch": iters,
                "shrink_start_epoch": start,
                "shrink_epochs": shrink,
                "base_keep_rate": base,
                "rates": [[float(r) for r in row] for row in rates],
            }
        )
    return runs


def training_step(m, x, y, rate: float) -> dict:
    """Their model's training forward at ``rate``, their loss, backward: what we store."""
    import torch
    from losses import DistillationLoss

    margins, tokens = [], []
    for blk in m.blocks:
        orig = blk.attn.forward

        def rec(inp, keep_rate=None, toks=None, _orig=orig):
            out = _orig(inp, keep_rate, toks)
            tokens.append(inp.shape[1])
            if out[3] is not None:  # cls_attn of a pruning block: gap at the cut
                margins.append(mg.margin(out[3].detach(), out[4])[0])
            return out

        blk.attn.forward = rec
    criterion = DistillationLoss(torch.nn.CrossEntropyLoss(), None, "none", 0.0, 1.0)
    m.zero_grad()
    logits = m(x, rate)
    loss = criterion(x, logits, y)
    loss.backward()
    for blk in m.blocks:
        del blk.attn.forward
    grads = {
        n: p.grad.detach().clone()
        for n, p in m.named_parameters()
        if n in GRAD_OTHERS or any(n.endswith(k) for k in GRAD_KEYS)
    }
    return {
        "keep_rate": rate,
        "logits": logits.detach().clone(),
        "ce": loss.detach().clone(),
        "grads": grads,
        "tokens_per_block": tokens,
        "min_keep_margin": min(margins),
    }


def gen(out: Path) -> None:
    import torch
    from evit import EViT

    out.mkdir(parents=True, exist_ok=True)
    runs = rate_grid()
    torch.save(runs, out / "keep_rates.pt")
    run, epoch, it = MID
    mid = runs[run]["rates"][epoch][it]
    keep = tuple(BASE if i in LOCS else 1 for i in range(mg.DEPTH))
    m = EViT(
        embed_dim=mg.EMBED,
        depth=mg.DEPTH,
        num_heads=mg.HEADS,
        num_classes=mg.CLASSES,
        qkv_bias=True,
        keep_rate=keep,
        fuse_token=True,
    )
    sd = torch.load(GOLDEN / "evit" / "evit.pth", weights_only=True)["model"]
    m.load_state_dict(sd, strict=True)
    m.train()
    x, y = mg.load_input(), labels()
    cases = {}
    for name, rate in (("target", BASE), ("warmup", mid)):
        step = training_step(m, x, y, rate)
        step["labels"] = y
        torch.save(step, out / f"rate_{name}.pt")
        cases[name] = {k: step[k] for k in ("keep_rate", "tokens_per_block", "min_keep_margin")} | {
            "ce": float(step["ce"])
        }
    repo, commit = mg.REPOS["evit"]
    meta = {
        "repository": f"https://github.com/{repo}",
        "commit": commit,
        "official_files": "evit.py (EViT, fuse_token=True), helpers.py (adjust_keep_rate), "
        "losses.py (DistillationLoss), engine.py (how train_one_epoch calls them)",
        "weights": "../../evit/evit.pth (the inference fixture), strict load",
        "input": "../../input.pt (float16, read as float32); labels: randint seed 1",
        "mode": "model.train(); dropout and drop path 0 (their defaults)",
        "prune_locs": list(LOCS),
        "target_keep_rate": BASE,
        "keep_rate_runs": [{k: v for k, v in r.items() if k != "rates"} for r in runs],
        "warmup_case": {"run": run, "epoch": epoch, "iteration": it},
        "cases": cases,
        "torch": torch.__version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirrors", default="/work/.mirror")
    ap.add_argument("--worker", default=None)
    a = ap.parse_args()
    if a.worker:
        mg.GEN["evit_training"] = lambda _repo: gen(HERE / "evit")
        mg.worker("evit_training", Path(a.worker))
        return
    with tempfile.TemporaryDirectory() as tmp:
        extract("evit", Path(a.mirrors), Path(tmp))
        subprocess.run([sys.executable, __file__, "--worker", tmp], check=True)


if __name__ == "__main__":
    main()
