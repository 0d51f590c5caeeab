"""Write the golden fixtures of tests/golden/: outputs of each method's *own* model class.

Not part of the test run (no ``test_`` prefix). Run once, by hand, in a throwaway venv
that has the authors' dependencies (timm); timm is no dependency of edgeprune:

    python3 -m venv /tmp/goldvenv
    /tmp/goldvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==0.4.12 tqdm
    /tmp/goldvenv/bin/python tests/golden/make_golden.py [--only spvit,...]

Each official repository's .py files are read from a local git mirror (default
/work/.mirror/<owner>+<name>/repo, or --mirrors DIR) at the commit recorded below;
``git archive`` copies them to a temporary folder, and one subprocess per method
imports the authors' module from there (one process each: DynamicViT's and SPViT's
``utils`` and A-ViT's own copy of timm would clash). Nothing of their code is copied
into this repository: only the tensors and the JSON metadata this script writes.

Every model: embed dim 32, 2 heads, depth 12, patch 16, 224x224 input, 100 classes
(a checkpoint of ~0.8 MB); the same 4 input images for all (tests/golden/input.pt,
stored as float16 so both sides read the same float32 values).

Random weights, widened (the method code's default init, trunc_normal std 0.02 on
Linear weights and zero biases, leaves keep/drop scores tied to ~1e-5, so a test on it
would decide nothing): after the authors' init, every parameter is redrawn, seeded:
  - Linear/Conv weights: normal, std 1/sqrt(fan_in); biases: normal, std 0.1
  - LayerNorm weights: 1 + normal std 0.1; LayerNorm biases: normal std 0.1
  - cls_token, pos_embed: normal, std 0.02 (as the authors' init)
The selectors' last Linear (the 2 keep/drop logits: DynamicViT's and SPViT's
out_conv.4) gets std 8/sqrt(fan_in), so that keep probabilities spread over (0, 1).
The smallest gap between the last kept and the first dropped score over the inputs is
written into each fixture's meta.json (``min_keep_margin``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
EMBED, HEADS, DEPTH, CLASSES, BATCH = 32, 2, 12, 100, 4
SEED = 0

REPOS = {
    "dynamicvit": ("raoyongming/DynamicViT", "1322e626d1e9eca18cc150569908fb4af29e15f7"),
    "spvit": ("PeiyanFlying/SPViT", "a1f9423db8098c4915192a9214fe0e5b9397e046"),
    "avit": ("NVlabs/A-ViT", "120c9cb90acf86828f1c61dd42c08722aa7173c7"),
    "evit": ("youweiliang/evit", "5ca95a7cf4a8637193284895c5bc0dd9dc365982"),
    "tome": ("facebookresearch/ToMe", "af95e4b1befa172dadccd8c81e223b10090f9579"),
}
# A-ViT gates: the file name carries them, as the released tiny-10-30.pth does. With
# random weights the tiny gates (10/30) halt nothing; center 10 halts a share of the
# tokens at every depth (counts in meta.json).
AVIT_GATES = (10.0, 10.0)


def widen_(model, seed: int, score_layers=()) -> None:
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        for name in ("cls_token", "pos_embed"):
            p = getattr(model, name)
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
        for mod in score_layers:
            mod.weight.mul_(8.0)


def make_input(path: Path) -> None:
    import torch

    g = torch.Generator().manual_seed(SEED)
    # images unlike each other (their own scale and per-channel offset), so that a
    # random-weight ViT does not give every one the same top-1
    scale = 0.5 + 1.5 * torch.rand(BATCH, 1, 1, 1, generator=g)
    offset = torch.randn(BATCH, 3, 1, 1, generator=g)
    x = (torch.randn(BATCH, 3, 224, 224, generator=g) * scale + offset).half()
    torch.save(x, path)


def load_input():
    import torch

    return torch.load(HERE / "input.pt", weights_only=True).float()


def margin(scores, k: int, candidates=None) -> tuple[float, float]:
    """Smallest gap between the k-th and (k+1)-th largest score over the batch, and the
    standard deviation of the candidates' scores (how spread the keep scores are)."""
    import torch

    s = scores if candidates is None else scores.masked_fill(~candidates, -math.inf)
    top = torch.topk(s, k + 1, dim=1).values
    live = scores if candidates is None else scores[candidates]
    return float((top[:, k - 1] - top[:, k]).min()), float(live.std())


def save(method: str, ckpt_name: str, model, logits, meta: dict) -> None:
    import torch

    out = HERE / method
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": sd}, out / ckpt_name)
    torch.save(logits.detach().clone(), out / "expected.pt")
    repo, commit = REPOS[method]
    meta = {
        "repository": f"https://github.com/{repo}",
        "commit": commit,
        "checkpoint": ckpt_name,
        "input": "../input.pt (float16, read as float32)",
        "embed_dim": EMBED,
        "num_heads": HEADS,
        "depth": DEPTH,
        "num_classes": CLASSES,
        "init": f"authors' init, then widened: see make_golden.widen_ (seed {SEED})",
        "torch": torch.__version__,
        "top1": logits.argmax(-1).tolist(),
        **meta,
    }
    import timm

    meta.setdefault("timm", getattr(timm, "__version__", "?"))
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


# --- one function per method; each runs in its own process, repo on sys.path -----------


def gen_dynamicvit(repo: Path) -> None:
    import torch
    from models.dyvit import VisionTransformerDiffPruning

    locs, ratios = [3, 6, 9], [0.7, 0.49, 0.343]
    torch.manual_seed(SEED)
    m = VisionTransformerDiffPruning(
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=CLASSES,
        qkv_bias=True,
        pruning_loc=locs,
        token_ratio=ratios,
    )
    widen_(m, SEED, [p.out_conv[4] for p in m.score_predictor])
    m.eval()
    x = load_input()
    margins = []

    def hook(stage):
        def f(mod, args, out):
            policy = args[1][:, :, 0] > 0
            k = int(196 * ratios[stage])
            margins.append(margin(out[:, :, 0], k, policy))

        return f

    for s, p in enumerate(m.score_predictor):
        p.register_forward_hook(hook(s))
    with torch.no_grad():
        logits = m(x)
    save(
        "dynamicvit",
        "dynamicvit.pth",
        m,
        logits,
        {
            "official_file": "models/dyvit.py",
            "class": "VisionTransformerDiffPruning",
            "prune_locs": locs,
            "keep_ratios": ratios,
            "path": "eval mode (the released inference): deterministic top-k, tokens removed",
            "min_keep_margin": min(m[0] for m in margins),
            "keep_score_std_per_stage": [m[1] for m in margins],
            "compare": "equal",
        },
    )


def gen_spvit(repo: Path) -> None:
    import copy

    import torch
    import vit_l2_3keep_senet as spv
    from torch import nn

    locs, ratios = [3, 6, 9], [0.617, 0.369, 0.137]
    counts = [int(196 * r) for r in ratios]  # 120, 72, 26
    torch.manual_seed(SEED)
    m = spv.VisionTransformerDiffPruning(
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=CLASSES,
        qkv_bias=True,
        pruning_loc=locs,
        token_ratio=ratios,
    )
    # The class lists ONE in_conv / out_conv module H times (weights tied across heads;
    # its state_dict stores H equal copies). Untied here (deepcopy per head) so that the
    # fixture also checks which channel slice goes with which head; the forward is theirs.
    for pred in m.score_predictor:
        pred.in_conv = nn.ModuleList(copy.deepcopy(pred.in_conv[0]) for _ in range(HEADS))
        pred.out_conv = nn.ModuleList(copy.deepcopy(pred.out_conv[0]) for _ in range(HEADS))
    widen_(m, SEED, [o[4] for p in m.score_predictor for o in p.out_conv])
    m.eval()

    # Deterministic fixed-count path: the released forward samples
    # F.gumbel_softmax(pred_score, hard=True) (also at eval). Replaced, in this module
    # only, by a hard top-k of softmax(pred_score)[..., 0] -- the distribution it samples
    # from -- over the live patch tokens (policy > 0, the trailing package tokens
    # excluded; they are forced kept by the forward anyway), k = int(196 * rho).
    state = {"policy": None, "stage": 0}
    margins = []

    def fixed_count(logits, hard=True, **_):
        policy = state["policy"][:, :, 0] > 0
        n_pack = state["stage"]
        cand = policy.clone()
        if n_pack:
            cand[:, -n_pack:] = False
        k = counts[state["stage"]]
        p = torch.softmax(logits, dim=-1)[:, :, 0]
        margins.append(margin(p, k, cand))
        idx = torch.topk(p.masked_fill(~cand, -1.0), k, dim=1).indices
        keep = torch.zeros_like(p).scatter(1, idx, 1.0)
        state["stage"] += 1
        return torch.stack([keep, 1 - keep], dim=-1)

    public = {k: getattr(spv.F, k) for k in dir(spv.F) if not k.startswith("__")}
    ns = types.SimpleNamespace(**public)
    ns.gumbel_softmax = fixed_count
    spv.F = ns
    for pred in m.score_predictor:
        orig = pred.forward

        def rec(x, policy, _orig=orig):
            state["policy"] = policy
            return _orig(x, policy)

        pred.forward = rec
    # its eval branch writes score_placeholder.json to the cwd (a temp dir here) and
    # moves a statistic to CUDA: .cuda() is the identity for this run
    torch.Tensor.cuda = lambda self, *a, **k: self
    x = load_input()
    with torch.no_grad():
        logits, _sparse = m(x)
    save(
        "spvit",
        "spvit.pth",
        m,
        logits,
        {
            "official_file": "vit_l2_3keep_senet.py",
            "class": "VisionTransformerDiffPruning (MultiheadPredictorLG selectors)",
            "prune_locs": locs,
            "keep_ratios": ratios,
            "patch_tokens_kept": counts,
            "path": (
                "eval mode, masked (tokens stay, attention policy) as released; "
                "F.gumbel_softmax in the module replaced by a hard top-k of "
                "softmax(pred_score)[...,0] over the live patches, k = int(196*rho); "
                "selector heads untied (deepcopy); Tensor.cuda = identity"
            ),
            "min_keep_margin": min(m[0] for m in margins),
            "keep_score_std_per_stage": [m[1] for m in margins],
            "compare": "equal",
        },
    )


def gen_evit(repo: Path) -> None:
    import torch
    from evit import EViT

    locs, rate = [3, 6, 9], 0.7
    keep = tuple(rate if i in locs else 1 for i in range(DEPTH))
    torch.manual_seed(SEED)
    m = EViT(
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=CLASSES,
        qkv_bias=True,
        keep_rate=keep,
        fuse_token=True,
    )
    widen_(m, SEED)
    m.eval()
    x = load_input()
    with torch.no_grad():
        logits = m(x)
    save(
        "evit",
        "evit.pth",
        m,
        logits,
        {
            "official_file": "evit.py",
            "class": "EViT (fuse_token=True)",
            "prune_locs": locs,
            "keep_ratios": [rate] * 3,
            "path": "eval mode, the released inference (deterministic top-k, tokens removed)",
            "compare": "equal",
            "patched": "torchprofile (imported by helpers.py for speed tests) stubbed",
        },
    )


def gen_tome(repo: Path) -> None:
    import tome
    import torch
    from timm.models.vision_transformer import VisionTransformer

    r = 8
    torch.manual_seed(SEED)
    m = VisionTransformer(
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=CLASSES,
        qkv_bias=True,
    )
    widen_(m, SEED)
    tome.patch.timm(m)
    m.r = r
    m.eval()
    x = load_input()
    with torch.no_grad():
        logits = m(x)
    save(
        "tome",
        "tome.pth",
        m,
        logits,
        {
            "official_file": "tome/patch/timm.py, tome/merge.py",
            "class": "timm VisionTransformer patched by tome.patch.timm, r = 8",
            "r": r,
            "path": "eval mode, the released inference (prop_attn on, cls token protected)",
            "compare": "equal",
        },
    )


def gen_avit(repo: Path) -> None:
    import torch

    # A-ViT ships its own copy of timm (repo/timm, act_vision_transformer.py): it is the
    # one imported here (repo first on sys.path). It allocates its state with .cuda():
    # the identity for this run.
    torch.Tensor.cuda = lambda self, *a, **k: self
    from timm.models.act_vision_transformer import VisionTransformer

    scale, center = AVIT_GATES
    args = types.SimpleNamespace(
        act_mode=4, gate_scale=scale, gate_center=center, distr_prior_alpha=0.0
    )
    torch.manual_seed(SEED)
    m = VisionTransformer(
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=CLASSES,
        qkv_bias=True,
        args=args,
    )
    widen_(m, SEED)
    m.eval()
    x = load_input()
    running = []
    for blk in m.blocks:
        orig = blk.forward_act

        def rec(inp, mask=None, _orig=orig):
            running.append((1 - mask).sum(dim=1).tolist())
            return _orig(inp, mask)

        blk.forward_act = rec
    with torch.no_grad():
        logits = m(x)
    name = f"tiny-{scale:g}-{center:g}.pth"
    save(
        "avit",
        name,
        m,
        logits,
        {
            "official_file": "timm/models/act_vision_transformer.py",
            "class": "VisionTransformer (act_mode 4), the repo's own timm copy",
            "gate_scale": scale,
            "gate_center": center,
            "running_tokens_per_block": running,
            "path": (
                "eval mode, the released inference: halted tokens masked (zeroed, -1000 "
                "attention bias), output = ponder-weighted sum; Tensor.cuda = identity. "
                "Deterministic as released; edgeprune's zipped model keeps fixed counts "
                "instead, so it is compared by agreement, not equality"
            ),
            "compare": "agreement",
        },
    )


GEN = {
    "dynamicvit": gen_dynamicvit,
    "spvit": gen_spvit,
    "evit": gen_evit,
    "tome": gen_tome,
    "avit": gen_avit,
}


def worker(method: str, repo: Path) -> None:
    import collections.abc

    # torch._six is gone from torch >= 2.0; the authors' utils.py files import inf,
    # string_classes, container_abcs from it: the same objects, shimmed
    sys.modules["torch._six"] = types.SimpleNamespace(
        inf=math.inf, string_classes=(str, bytes), container_abcs=collections.abc, int_classes=int
    )
    # logging/profiling packages their utils/helpers import and the models never call
    sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=None)
    sys.modules["torchprofile"] = types.SimpleNamespace(profile_macs=None)
    sys.path.insert(0, str(repo))
    os.chdir(tempfile.mkdtemp())
    GEN[method](repo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(GEN))
    ap.add_argument("--mirrors", default="/work/.mirror")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--repo", default=None)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, Path(a.repo))
        return
    if not (HERE / "input.pt").exists():
        make_input(HERE / "input.pt")
    for method in a.only.split(","):
        repo, commit = REPOS[method]
        git_dir = Path(a.mirrors) / repo.replace("/", "+") / "repo"
        with tempfile.TemporaryDirectory() as tmp:
            git = ["git", "-C", str(git_dir)]
            names = subprocess.run(
                [*git, "ls-tree", "-r", "--name-only", commit],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split("\n")
            py = [n for n in names if n.endswith(".py")]  # the mirrors lack large binaries
            archive = subprocess.run(
                [*git, "archive", commit, "--", *py], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            print(f"== {method}: {repo}@{commit[:10]}", flush=True)
            subprocess.run(
                [sys.executable, __file__, "--worker", method, "--repo", tmp], check=True
            )


if __name__ == "__main__":
    main()
