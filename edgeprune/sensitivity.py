"""``edgeprune sensitivity``: measured accuracy per pruning stage and keep ratio, written
as the ``edgeprune.sensitivity`` file that ``budget --sensitivity`` reads.

For every pruning stage s of the SRC and every keep ratio r of the grid, the static
model with stage s at r and the other stages not pruning is run over the image folder:

* methods whose ratios are cumulative (DynamicViT, SPViT, A-ViT: a fraction of the
  original patches) get ``[1, …, 1, r, r, …, r]``: earlier stages keep everything,
  stage s keeps r, later stages keep what reaches them;
* methods whose ratios are relative to each stage's input (EViT) get ``r`` at stage s
  and 1.0 elsewhere.

The metric (said in the file's ``metric`` and ``metric_description``): **top-1
accuracy (%)** when the folder is labelled (class sub-folders), else **top-1
agreement with the dense backbone (%)** (same weights, no pruning; 100 for the dense
model itself). Every point also records agreement and KL divergence to the dense
backbone. ``budget`` combines the curves additively: predicted = dense − Σ_s (dense −
acc_s(r_s)), an approximation that ignores interactions between stages.

``resume``: each measured point is saved (atomically) to a resume file; a rerun with
the same request continues from it, and the file is removed when the result is written.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.budget import SENSITIVITY_SCHEMA
from edgeprune.errors import EdgepruneError
from edgeprune.evaluate import compare_logits, dense_backbone, topk_accuracy
from edgeprune.images import batches, preprocess_for, scan
from edgeprune.source import Source, resolve

SENSITIVITY_VERSION = 1
DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class SensitivityRequest:
    src: str
    images: Path
    grid: tuple[float, ...] = DEFAULT_GRID
    limit: int | None = None
    batch: int = 16
    heads: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    method: str | None = None
    locs: tuple[int, ...] | None = None
    metric: str | None = None  # "top1" | "agreement"; None: top1 when labelled
    threads: int | None = None  # torch intra-op threads (None: torch's default)


def parse_grid(text: str | None) -> tuple[float, ...]:
    from edgeprune.source import parse_floats

    grid = parse_floats(text, "--grid") if text is not None else DEFAULT_GRID
    if not grid or any(not (math.isfinite(r) and 0 < r <= 1) for r in grid):
        raise EdgepruneError(f"--grid {text} needs keep ratios in (0, 1]", "e.g. 0.3,0.5,0.7,1")
    return tuple(sorted(set(grid)))


def stage_schedule(n: int, s: int, r: float, cumulative: bool) -> tuple[float, ...]:
    """Keep ratios with stage ``s`` at ``r`` and the other stages not pruning."""
    if cumulative:
        return tuple(1.0 if i < s else r for i in range(n))
    return tuple(r if i == s else 1.0 for i in range(n))


def schedule_model(source: Source, keep: Sequence[float]) -> torch.nn.Module:
    """The static model of ``source`` at another keep schedule, same weights."""
    cfg = source.method.with_overrides(source.config, source.arch, tuple(keep))
    plan = source.method.token_plan(source.arch, cfg)
    m = source.method.build(source.arch, plan)
    m.load_state_dict(source.model().state_dict())
    return m.eval()


class ResumeFile:
    """Points measured so far, saved atomically after each one."""

    def __init__(self, path: Path | None, key: dict):
        self.path, self.key, self.points = path, key, {}
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            assert isinstance(data, dict)
        except (OSError, ValueError, AssertionError):
            raise EdgepruneError(
                f"resume file {path} is corrupt", "delete it to start afresh"
            ) from None
        if data.get("request") != key:
            raise EdgepruneError(
                f"resume file {path} is for a different request",
                "rerun with the same options, or delete it to start afresh",
            )
        for p in data.get("points", []):
            self.points[(p["stage"], p["keep_ratio"])] = p

    def put(self, point: dict) -> None:
        from edgeprune.atomic import write_json_atomic

        self.points[(point["stage"], point["keep_ratio"])] = point
        if self.path is not None:
            write_json_atomic(
                self.path, {"request": self.key, "points": list(self.points.values())}
            )

    def done(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _request_key(req: SensitivityRequest, source: Source, files: list[Path], pre) -> dict:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode() + b"\0")
    src_digest = None
    if source.kind == "checkpoint":
        from edgeprune.export.manifest import sha256_file

        src_digest = sha256_file(Path(source.text))
    return {
        "source": source.text,
        "source_sha256": src_digest,
        "method": source.method.name,
        "locs": list(source.config.prune_locs),
        "grid": list(req.grid),
        "images": str(req.images),
        "files_sha256": h.hexdigest(),
        "preprocess": pre.to_dict(),
    }


def _logits(model: torch.nn.Module, x: torch.Tensor, batch: int) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def measure(
    req: SensitivityRequest,
    resume: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Measure the curves; returns the ``edgeprune.sensitivity`` dict."""
    from edgeprune.evaluate import torch_threads

    with torch_threads(req.threads):
        return _measure(req, resume, progress)


def _measure(req: SensitivityRequest, resume: Path | None, progress) -> dict:
    from edgeprune.export.manifest import now_utc

    images = scan(req.images)
    source = resolve(req.src, method=req.method, locs=req.locs, heads=req.heads)
    locs = tuple(source.config.prune_locs)
    if source.method.name == "dense" or not locs:
        raise EdgepruneError(
            f"{req.src} prunes no tokens, so it has no stages to measure",
            "give a pruned SRC, e.g. deit_tiny:dynamicvit@0.7 or --method dynamicvit",
        )
    pre = preprocess_for(source.arch.img_size, req.resize, req.mean, req.std)
    images = images.limit(req.limit)
    skipped: list[Path] = []
    parts = list(batches(images, pre, req.batch, skipped))
    if not parts:
        raise EdgepruneError(
            f"none of the {len(images.files)} images in {req.images} could be read"
        )
    x = torch.cat([b.images for b in parts])
    labels = np.concatenate([b.labels.numpy() for b in parts]) if images.labelled else None
    dense_logits = _logits(dense_backbone(source), x, req.batch)
    if req.metric not in (None, "top1", "agreement"):
        raise EdgepruneError(f"--metric {req.metric} is unknown", "expected top1 or agreement")
    if req.metric == "top1" and labels is None:
        raise EdgepruneError(f"--metric top1 needs labels: {req.images} has no class folders")
    labelled = labels is not None and req.metric != "agreement"

    def metric(logits: np.ndarray) -> float:
        if labelled:
            return topk_accuracy(logits, labels, 1)
        return compare_logits(logits, dense_logits)["top1_agreement"]

    store = ResumeFile(resume, _request_key(req, source, images.files, pre))
    todo = [(s, r) for s in range(len(locs)) for r in req.grid]
    for i, (s, r) in enumerate(todo):
        if progress is not None:
            progress(f"stage {locs[s]} @ {r:g}", i, len(todo))
        if (locs[s], r) in store.points:
            continue
        keep = stage_schedule(len(locs), s, r, source.method.cumulative)
        logits = _logits(schedule_model(source, keep), x, req.batch)
        cmp = compare_logits(logits, dense_logits)
        store.put(
            {
                "stage": locs[s],
                "keep_ratio": r,
                "keep_ratios": list(keep),
                "accuracy": metric(logits),
                "agreement_with_dense": cmp["top1_agreement"],
                "kl_to_dense": cmp["kl"],
            }
        )
    if progress is not None:
        progress("done", len(todo), len(todo))
    stages = {}
    for loc in locs:
        pts = [store.points[(loc, r)] for r in req.grid]
        stages[str(loc)] = {
            "keep_ratios": [p["keep_ratio"] for p in pts],
            "accuracy": [p["accuracy"] for p in pts],
            "agreement_with_dense": [p["agreement_with_dense"] for p in pts],
            "kl_to_dense": [p["kl_to_dense"] for p in pts],
            "schedules": [p["keep_ratios"] for p in pts],
        }
    result = {
        "schema": SENSITIVITY_SCHEMA,
        "version": SENSITIVITY_VERSION,
        "created": now_utc(),
        "metric": "top1" if labelled else "agreement_with_dense",
        "metric_description": (
            "top-1 accuracy (%) on the labelled image folder"
            if labelled
            else "top-1 agreement (%) with the dense backbone"
            + (" (no labels in the folder)" if labels is None else " (--metric agreement)")
        ),
        "dense": metric(dense_logits),
        "stages": stages,
        "source": source.describe(),
        "arch": source.arch.name,
        "method": source.method.name,
        "locs": list(locs),
        "ratio_semantics": (
            "cumulative: a fraction of the original patches; other stages keep all they get"
            if source.method.cumulative
            else "relative to the stage's input; other stages at 1.0"
        ),
        "images": {**images.describe(), "read": len(x), "skipped_unreadable": len(skipped)},
        "preprocess": pre.to_dict(),
        "notes": list(source.notes),
    }
    store.done()
    return result


# ---- budget --sensitivity: the plot -------------------------------------------------------
def plot_accuracy_pareto(result, sens, model, path: Path, measured_points=None) -> None:
    """Predicted accuracy vs predicted latency of every searched schedule, the Pareto
    front, the chosen point (named), the target, and — from the sensitivity file — the
    measured single-stage schedules at their predicted latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeprune.atomic import atomic_path
    from edgeprune.budget import pareto_front

    cands = result.candidates
    step = max(1, len(cands) // 4000)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.scatter(
        [c.predicted_ms for c in cands[::step]],
        [c.objective() for c in cands[::step]],
        s=4,
        c="0.78",
        label=f"{result.schedule} schedules (additive model)",
    )
    front = pareto_front(cands)
    ax.plot(
        [c.predicted_ms for c in front],
        [c.objective() for c in front],
        "-",
        c="C0",
        label="Pareto front",
    )
    for i, (loc, lat, acc) in enumerate(measured_points or []):
        ax.plot(lat, acc, "o-", ms=4, c=f"C{(i % 6) + 4}", label=f"measured, stage {loc} alone")
    ch = result.chosen
    name = (
        "dense" if not ch.keep_ratios else "[" + ", ".join(f"{r:.3g}" for r in ch.keep_ratios) + "]"
    )
    ax.plot(
        [ch.predicted_ms],
        [ch.objective()],
        "*",
        c="C3",
        ms=15,
        label=f"chosen {name}: {ch.predicted_ms:.2f} ms, {ch.objective():.2f}",
    )
    ax.annotate(
        f"chosen {name}",
        (ch.predicted_ms, ch.objective()),
        textcoords="offset points",
        xytext=(-10, -18),
        ha="right",
        fontsize=8,
        color="C3",
    )
    ax.axvline(result.target_ms, ls="--", c="C2", label=f"target {result.target_ms:.2f} ms")
    ax.axvline(result.dense_ms, ls=":", c="0.4", label=f"dense {result.dense_ms:.2f} ms")
    ax.set_xlabel(f"predicted latency (ms), {model.table.device.get('name')}")
    ax.set_ylabel(f"{sens.metric} (%)")
    ax.set_title(
        f"{result.arch.name} / {result.method}, locs {list(result.locs)}: accuracy vs latency",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def measured_curves(result, sens, model) -> list[tuple[int, list[float], list[float]]]:
    """Per stage: the predicted latency and measured accuracy of its single-stage
    schedules (the points the sensitivity file holds)."""
    from edgeprune.methods import MethodConfig, get_method

    meth = get_method(result.method)
    out = []
    n = len(result.locs)
    for s, loc in enumerate(result.locs):
        xs, ys = sens.stages[loc]
        plans, acc = [], []
        for r, y in zip(xs, ys, strict=True):
            keep = stage_schedule(n, s, r, meth.cumulative)
            try:
                plans.append(meth.token_plan(result.arch, MethodConfig(result.locs, keep, {})))
            except EdgepruneError:
                continue
            acc.append(y)
        if plans:
            out.append((loc, [float(v) for v in model.predict_many(plans)], acc))
    return out


def chosen_summary(result, sens) -> str:
    """One line naming the point ``budget --sensitivity`` chose on the front."""
    from edgeprune.budget import pareto_front

    ch = result.chosen
    front = pareto_front(result.candidates)
    on = any(c.keep_ratios == ch.keep_ratios for c in front) or result.status == "dense"
    name = (
        "dense" if not ch.keep_ratios else "[" + ", ".join(f"{r:.3g}" for r in ch.keep_ratios) + "]"
    )
    return (
        f"chosen point: {name} at {ch.predicted_ms:.3f} ms, predicted {sens.metric} "
        f"{ch.objective():.2f} (dense {sens.dense:.2f} at {result.dense_ms:.3f} ms); "
        f"{'on' if on else 'off'} the Pareto front of {len(front)} schedules"
    )
