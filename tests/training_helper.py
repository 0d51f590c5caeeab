"""Fixtures of the training tests: a tiny ImageNet-layout folder (train/, val/), the
tiny dense model and latency table of ``accuracy_helper``, and a budget on that table."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.core.images import write_demo_images
from tests.accuracy_helper import LOCS, write_dense, write_profile


def write_imagenet(root: Path, classes: int = 4, train: int = 16, val: int = 4) -> Path:
    """root/train/class_*/ and root/val/class_*/ of synthetic 40×40 PNGs."""
    root.mkdir(parents=True, exist_ok=True)
    write_demo_images(root / "train", classes=classes, per_class=train, size=40, seed=1)
    write_demo_images(root / "val", classes=classes, per_class=val, size=40, seed=2)
    return root


def write_budget(
    d: Path, target_ms: float, method: str = "dynamicvit", margin: float = 0.05
) -> Path:
    """``edgeprune budget``'s file for ``method`` at ``target_ms`` on the tiny table."""
    from edgeprune.budget.file import budget_dict
    from edgeprune.budget.search import search
    from edgeprune.core.atomic import write_json_atomic
    from edgeprune.latency.model import load_model

    table = d / ("profile.json" if method == "dynamicvit" else f"profile_{method}.json")
    if not table.exists():
        write_profile(table, method)
    model = load_model(table)
    locs = None if method == "tome" else LOCS
    res = search(model, target_ms, method, "geometric", locs, margin=margin, margin_source="given")
    path = d / f"budget_{method}_{target_ms:g}.json"
    write_json_atomic(path, budget_dict(res, model, table))
    return path


def budget_near_its_aim(d: Path, method: str, start: float = 3.0) -> Path:
    """A budget at ``start`` ms, or the nearest target below it whose pick predicts within
    5 % of its aim: a 17-token sequence gives ToMe few r schedules (on DeiT's 197 the
    family is fine-grained), and a method trained at the budget's schedule ends where
    the budget's pick is."""
    target = start
    while target > 1.0:
        path = write_budget(d, round(target, 3), method)
        b = json.loads(path.read_text())
        if b["predicted_ms"] >= 0.95 * b["aim_ms"]:
            return path
        target -= 0.02
    raise AssertionError(f"no {method} budget near its aim on the tiny table")


def setup_dir(d: Path, train: int = 16) -> Path:
    """``d`` with dense.pth, profile.json and data/ (``train`` images a class)."""
    write_dense(d / "dense.pth")
    write_profile(d / "profile.json")
    write_imagenet(d / "data", train=train)
    return d
