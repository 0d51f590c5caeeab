"""Write tests/golden/training/tome/: ToMe's patched model trained, by ToMe's own code.

Not part of the test run (no ``test_`` prefix). Run by hand in the golden venv
(timm 0.4.12, which ToMe's timm patch supports: it falls back to ``drop_path`` where
newer timm has ``drop_path1/2``; see tests/golden/make_golden.py for the venv):

    /tmp/goldvenv/bin/python tests/golden/training/make_tome.py [--mirrors /work/.mirror]

facebookresearch/ToMe at the commit pinned in make_golden.REPOS, its .py files copied by
``git archive`` to a temporary folder and imported in a subprocess; nothing of their
code is copied here. ToMe has no training code of its own: one trains the model that
``tome.patch.timm`` patched with the model's recipe (README). Stored, per case
``<name>.pt``: timm's ``VisionTransformer`` (the inference fixture's tiny widened
weights, tests/golden/tome/tome.pth, strict load) patched by ``tome.patch.timm`` with
``prop_attn`` as the case says, ``model.r = r``, in **training mode** (dropout and drop
path 0) on tests/golden/input.pt; the loss ``torch.nn.CrossEntropyLoss`` on fixed labels
(DeiT's recipe without mixup and smoothing; ToMe adds no term); after ``backward()``:
the gradients of every block's ``attn.qkv.weight`` and ``mlp.fc1.weight``, of the patch
embedding, ``pos_embed``, ``cls_token`` and the head; the tokens per block; the
smallest gap, over the batch, between the r-th and (r+1)-th best match score
(``min_merge_margin``: which tokens merge) and between a merged token's best and second
best match (``min_match_margin``: where it goes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import make_evit  # noqa: E402  (extract, labels, the gradients kept)
import make_golden as mg  # noqa: E402

# (name, r, prop_attn): the inference fixture's r; r = 16, where ToMe's clamp to
# (N - 1) // 2 acts in the last blocks; proportional attention off, as apply_patch's
# docstring asks for training
CASES = (("r8", 8, True), ("r16", 16, True), ("r8_noprop", 8, False))


def record_matching(tome_timm, log: list) -> None:
    """Wrap the matching the patched blocks call, to log the margins of its choices."""
    import torch

    orig = tome_timm.bipartite_soft_matching

    def rec(metric, r, class_token=False, distill_token=False):
        with torch.no_grad():
            t = metric.shape[1]
            rr = min(r, (t - 1) // 2)
            m = metric / metric.norm(dim=-1, keepdim=True)
            scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)
            scores[:, 0, :] = -float("inf")
            node = scores.max(dim=-1).values
            top = node.topk(rr + 1, dim=-1)
            merge_gap = float((top.values[:, rr - 1] - top.values[:, rr]).min())
            best2 = scores.topk(2, dim=-1).values  # B×Na×2
            gap = (best2[..., 0] - best2[..., 1]).gather(1, top.indices[:, :rr])
            log.append((t, merge_gap, float(gap.min())))
        return orig(metric, r, class_token, distill_token)

    tome_timm.bipartite_soft_matching = rec


def gen(out: Path) -> None:
    import tome
    import torch
    from timm.models.vision_transformer import VisionTransformer

    out.mkdir(parents=True, exist_ok=True)
    sd = torch.load(GOLDEN_SD, weights_only=True)["model"]
    x, y = mg.load_input(), make_evit.labels()
    log: list = []
    # the module itself: the package's ``tome.patch.timm`` is its apply_patch function
    record_matching(sys.modules["tome.patch.timm"], log)
    cases = {}
    for name, r, prop in CASES:
        m = VisionTransformer(
            embed_dim=mg.EMBED,
            depth=mg.DEPTH,
            num_heads=mg.HEADS,
            num_classes=mg.CLASSES,
            qkv_bias=True,
        )
        m.load_state_dict(sd, strict=True)
        tome.patch.timm(m, prop_attn=prop)
        m.r = r
        m.train()
        log.clear()
        logits = m(x)
        loss = torch.nn.CrossEntropyLoss()(logits, y)
        loss.backward()
        grads = {
            n: p.grad.detach().clone()
            for n, p in m.named_parameters()
            if n in make_evit.GRAD_OTHERS or any(n.endswith(k) for k in make_evit.GRAD_KEYS)
        }
        info = {
            "r": r,
            "prop_attn": prop,
            "tokens_per_block": [t for t, _, _ in log],
            "min_merge_margin": min(g for _, g, _ in log),
            "min_match_margin": min(g for _, _, g in log),
            "ce": float(loss.detach()),
        }
        torch.save(
            {
                **info,
                "logits": logits.detach().clone(),
                "ce": loss.detach().clone(),
                "grads": grads,
                "labels": y,
            },
            out / f"{name}.pt",
        )
        cases[name] = info
    repo, commit = mg.REPOS["tome"]
    meta = {
        "repository": f"https://github.com/{repo}",
        "commit": commit,
        "official_files": "tome/patch/timm.py (apply_patch, ToMeBlock, ToMeAttention), "
        "tome/merge.py (bipartite_soft_matching, merge_wavg), tome/utils.py (parse_r)",
        "weights": "../../tome/tome.pth (the inference fixture), strict load",
        "input": "../../input.pt (float16, read as float32); labels: randint seed 1",
        "mode": "model.train(); dropout and drop path 0; trace_source off (visualisation)",
        "cases": cases,
        "torch": torch.__version__,
        "timm": "0.4.12",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


GOLDEN_SD = HERE.parent / "tome" / "tome.pth"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirrors", default="/work/.mirror")
    ap.add_argument("--worker", default=None)
    a = ap.parse_args()
    if a.worker:
        mg.GEN["tome_training"] = lambda _repo: gen(HERE / "tome")
        mg.worker("tome_training", Path(a.worker))
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_evit.extract("tome", Path(a.mirrors), Path(tmp))
        subprocess.run([sys.executable, __file__, "--worker", tmp], check=True)


if __name__ == "__main__":
    main()
