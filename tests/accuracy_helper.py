"""A tiny DeiT-shaped model, its synthetic latency profile and image folders, for the
accuracy tests (evaluate, sensitivity, finetune): 32×32 images, patch 8 (16 patches),
embed 64, 2 heads, depth 4, 4 classes — fast enough to train for a few dozen steps."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeprune.core.arch import Arch
from edgeprune.latency.table import Curve, LatencyTable, Point

TINY = Arch("custom", 64, 2, depth=4, patch_size=8, img_size=32, num_classes=4)
HEADS = 2
LOCS = (1, 2, 3)


def write_dense(path: Path, seed: int = 0) -> Path:
    """A dense tiny DeiT checkpoint in timm's key layout (seeded random weights)."""
    from edgeprune.core.models.deit import VisionTransformer

    torch.save({"model": VisionTransformer(TINY).init_random(seed).state_dict()}, path)
    return path


def write_dynamicvit(path: Path, seed: int = 0) -> Path:
    """A tiny DynamicViT checkpoint (predictor keys ``score_predictor.{0,1,2}``)."""
    from edgeprune.core.methods import MethodConfig, get_method
    from edgeprune.core.models.deit import init_random_

    m = get_method("dynamicvit")
    model = m.build(TINY, m.token_plan(TINY, MethodConfig(LOCS, (0.75, 0.5, 0.25), {})))
    init_random_(model, seed)
    torch.save({"model": model.state_dict()}, path)
    return path


def tiny_table(method: str = "dynamicvit") -> LatencyTable:
    """Made-up latencies (measured: false) for TINY: block a + b·n ms; ``method``'s
    selector (or merge) a small a + b·n too."""
    ns = (1, 5, 9, 13, 17)

    def cv(a: float, b: float) -> Curve:
        return Curve(ns, tuple(a + b * n for n in ns), tuple(1.1 * (a + b * n) for n in ns))

    return LatencyTable(
        device={"name": "synthetic", "runtime": "none", "threads": 1},
        arch=TINY,
        method=method,
        batch=1,
        date="synthetic",
        measured=False,
        block=cv(0.1, 0.05),
        embed=Point(0.2, 0.22),
        head=Point(0.05, 0.06),
        # a method that prunes inside a block (EViT, ToMe, A-ViT) needs attention and MLP apart
        attn=cv(0.04, 0.02) if method in ("evit", "tome", "avit") else None,
        mlp=cv(0.06, 0.03) if method in ("evit", "tome", "avit") else None,
        selectors={method: cv(0.01, 0.001)},
        extra={"note": "synthetic numbers for tests, not a measurement"},
    )


def write_profile(path: Path, method: str = "dynamicvit") -> Path:
    tiny_table(method).save(path)
    return path
