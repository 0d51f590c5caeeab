"""``edgeprune sensitivity``: measured accuracy per pruning stage and keep ratio, written
as the ``edgeprune.accuracy.sensitivity`` file that ``budget --sensitivity`` reads.

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

Measurements that cannot tell schedules apart (every value the same, as 0.0 on random
weights, or every value at chance level) are recorded in the file's ``indistinct`` (the
reason; None otherwise), which ``budget --sensitivity`` reads.

Under ``torchrun`` each process runs the dense backbone and every point's model over its
share of the images (``files[rank::size]``); the logits are gathered in the folder's
order and the metric is computed on the whole set, as one process computes it. Rank 0
alone writes the resume file and the output; the others wait for it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from edgeprune.accuracy.evaluate import (
    compare_logits,
    dense_backbone,
    shard_images,
    topk_accuracy,
    torch_threads,
)
from edgeprune.budget.search import SENSITIVITY_SCHEMA, Accuracy, indistinct, stage_schedule
from edgeprune.core import distributed
from edgeprune.core.atomic import Output, check_outputs, write_json_atomic
from edgeprune.core.distributed import World
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import ImageSet, Preprocess, batches, preprocess_for, scan
from edgeprune.core.parsing import parse_floats
from edgeprune.core.schema import NonNegative, Strict
from edgeprune.core.source import Source, resolve
from edgeprune.export.manifest import now_utc, sha256_file
from edgeprune.profiling.resume import ResumeData, read_resume, resume_path

SENSITIVITY_VERSION = 1
DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(kw_only=True)
class SensitivityRequest:
    """What ``edgeprune sensitivity`` measures: the SRC, the image folder, the grid of
    keep ratios and how the images are read."""

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
    grid = parse_floats(text, "--grid") if text is not None else DEFAULT_GRID
    if not grid or any(not (math.isfinite(r) and 0 < r <= 1) for r in grid):
        raise EdgepruneError(f"--grid {text} needs keep ratios in (0, 1]", "e.g. 0.3,0.5,0.7,1")
    return tuple(sorted(set(grid)))


def schedule_model(source: Source, keep: Sequence[float]) -> torch.nn.Module:
    """The static model of ``source`` at another keep schedule, same weights."""
    cfg = source.method.with_overrides(source.config, source.arch, tuple(keep))
    plan = source.method.token_plan(source.arch, cfg)
    m = source.method.build(source.arch, plan)
    m.load_state_dict(source.model().state_dict())
    return m.eval()


Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class PointFile(Strict):
    """One measured point in the resume file: it goes into the sensitivity file as is."""

    stage: Annotated[int, Field(ge=0, le=10_000)]
    keep_ratio: Ratio
    keep_ratios: Annotated[list[Ratio], Field(max_length=10_000)]
    accuracy: Accuracy
    agreement_with_dense: Accuracy
    kl_to_dense: NonNegative


class SensitivityResume(ResumeData):
    points: list[PointFile] = []


class ResumeFile:
    """Points measured so far, saved atomically after each one."""

    def __init__(self, path: Path | None, key: dict, world: World | None = None):
        """Read by every process; ``world``'s rank 0 alone writes (and removes) it."""
        self.path, self.key, self.points = path, key, {}
        self.writes = world is None or world.main
        data = read_resume(path, key, "request", SensitivityResume)
        for p in data.points if data is not None else []:
            self.points[(p.stage, p.keep_ratio)] = p.model_dump()

    def put(self, point: dict) -> None:
        self.points[(point["stage"], point["keep_ratio"])] = point
        if self.path is not None and self.writes:
            write_json_atomic(
                self.path, {"request": self.key, "points": list(self.points.values())}
            )

    def done(self) -> None:
        if self.path is not None and self.writes:
            self.path.unlink(missing_ok=True)


def _request_key(req: SensitivityRequest, source: Source, files: list[Path], pre) -> dict:
    """What must match for saved points to be reused by --resume: the options, and the
    contents (sha256) of every file read — each image, the checkpoint, a calibration —
    so changed pixels or weights under the same names are never taken for the old ones."""
    h = hashlib.sha256()
    for f in files:
        name = Path(f).relative_to(req.images) if Path(f).is_relative_to(req.images) else f
        h.update(str(name).encode() + b"\0")
        h.update(sha256_file(f).encode())
    src_digest = None
    if source.kind == "checkpoint":
        src_digest = sha256_file(Path(source.text))
    calib = source.config.options.get("calibration")
    return {
        "source": source.text,
        "source_sha256": src_digest,
        "method": source.method.name,
        "options": {k: str(v) for k, v in sorted(source.config.options.items())},
        "calibration_sha256": sha256_file(Path(str(calib))) if calib else None,
        "locs": list(source.config.prune_locs),
        "grid": list(req.grid),
        "images": str(req.images),
        "images_sha256": h.hexdigest(),
        "preprocess": pre.to_dict(),
    }


def _logits(model: torch.nn.Module, inp: _Inputs, batch: int) -> np.ndarray:
    """``model``'s logits on every image read, in the folder's order: this process's
    share computed here, the others' gathered."""
    with torch.no_grad():
        parts = [model(inp.x[i : i + batch]) for i in range(0, len(inp.x), batch)]
    rows = torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)
    return distributed.gather_rows(inp.world, rows, inp.index)


def measure(
    req: SensitivityRequest,
    resume: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    world: World | None = None,
) -> dict:
    """Measure the curves; returns the ``edgeprune.accuracy.sensitivity`` dict
    (``world``: the processes sharing the images, see the module docstring)."""

    with torch_threads(req.threads):
        return _measure(req, resume, progress, world or World())


@dataclass(kw_only=True)
class _Inputs:
    """The pruned source, its stages, and the images it is measured on, as read."""

    source: Source
    locs: tuple[int, ...]
    images: ImageSet
    pre: Preprocess
    world: World
    x: torch.Tensor  # this process's share of the images read, preprocessed
    index: np.ndarray  # their positions in ``images.files``
    read: int  # how many images were read, by every process
    labels: np.ndarray | None = None  # the labels of all read (None: an unlabelled folder)
    skipped: int = 0  # unreadable images, on every process
    dense_logits: np.ndarray | None = None  # the dense backbone's answers on all read

    def metric(self, logits: np.ndarray, labelled: bool) -> float:
        """Top-1 accuracy (``labelled``), else top-1 agreement with dense (%)."""
        if labelled:
            return topk_accuracy(logits, self.labels, 1)
        return compare_logits(logits, self.dense_logits)["top1_agreement"]


def _measure(req: SensitivityRequest, resume: Path | None, progress, world: World) -> dict:
    inp = _inputs(req, world)
    labelled = _labelled(req, inp.labels)
    key = _request_key(req, inp.source, inp.images.files, inp.pre)
    store = ResumeFile(resume, key, world)
    world.barrier()  # every process has read the resume file before rank 0 adds to it
    _measure_points(req, inp, labelled, store, progress)
    result = _result(req, inp, labelled, _stage_curves(inp.locs, req.grid, store))
    store.done()
    return result


def _inputs(req: SensitivityRequest, world: World) -> _Inputs:
    """Resolve the SRC (refusing one that prunes nothing), read this process's share of
    the images and run the dense backbone over all of them."""
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
    part, mine = shard_images(images, world)
    skipped: list[Path] = []
    parts = list(batches(part, pre, req.batch, skipped))
    index = np.array([mine[i] for b in parts for i in b.indices], dtype=np.int64)
    read = distributed.gather_rows(world, index, index)  # every process's, in order
    if not len(read):
        raise EdgepruneError(
            f"none of the {len(images.files)} images in {req.images} could be read"
        )
    labels = images.labels
    inp = _Inputs(
        source=source, locs=locs, images=images, pre=pre, world=world, index=index,
        x=torch.cat([b.images for b in parts]) if parts else torch.empty(0), read=len(read),
        labels=None if labels is None else np.array([labels[i] for i in read], np.int64),
        skipped=int(world.sum(torch.tensor([len(skipped)])).item()),
    )  # fmt: skip
    inp.dense_logits = _logits(dense_backbone(source), inp, req.batch)
    return inp


def _labelled(req: SensitivityRequest, labels: np.ndarray | None) -> bool:
    """Whether the metric is top-1 accuracy (else agreement with dense); ``--metric``
    checked against the folder."""
    if req.metric not in (None, "top1", "agreement"):
        raise EdgepruneError(f"--metric {req.metric} is unknown", "expected top1 or agreement")
    if req.metric == "top1" and labels is None:
        raise EdgepruneError(f"--metric top1 needs labels: {req.images} has no class folders")
    return labels is not None and req.metric != "agreement"


def _measure_points(
    req: SensitivityRequest, inp: _Inputs, labelled: bool, store: ResumeFile, progress
) -> None:
    """Measure every (stage, keep ratio) point not in ``store`` yet, saving each."""
    locs, cumulative = inp.locs, inp.source.method.cumulative
    todo = [(s, r) for s in range(len(locs)) for r in req.grid]
    for i, (s, r) in enumerate(todo):
        if progress is not None:
            progress(f"stage {locs[s]} @ {r:g}", i, len(todo))
        if (locs[s], r) in store.points:
            continue
        keep = stage_schedule(len(locs), s, r, cumulative)
        logits = _logits(schedule_model(inp.source, keep), inp, req.batch)
        cmp = compare_logits(logits, inp.dense_logits)
        store.put(
            {
                "stage": locs[s],
                "keep_ratio": r,
                "keep_ratios": list(keep),
                "accuracy": inp.metric(logits, labelled),
                "agreement_with_dense": cmp["top1_agreement"],
                "kl_to_dense": cmp["kl"],
            }
        )
    if progress is not None:
        progress("done", len(todo), len(todo))


def _stage_curves(locs: tuple[int, ...], grid: Sequence[float], store: ResumeFile) -> dict:
    """The file's ``stages``: per pruning location, its points along the grid."""
    stages = {}
    for loc in locs:
        pts = [store.points[(loc, r)] for r in grid]
        stages[str(loc)] = {
            "keep_ratios": [p["keep_ratio"] for p in pts],
            "accuracy": [p["accuracy"] for p in pts],
            "agreement_with_dense": [p["agreement_with_dense"] for p in pts],
            "kl_to_dense": [p["kl_to_dense"] for p in pts],
            "schedules": [p["keep_ratios"] for p in pts],
        }
    return stages


def _indistinct(inp: _Inputs, labelled: bool, dense: float, stages: dict) -> str | None:
    """Why the measured points cannot tell schedules apart (``budget.indistinct``), or
    None: every value the same, or (top-1 on labelled images) every value at chance."""
    values = [dense, *(a for st in stages.values() for a in st["accuracy"])]
    classes = len(inp.images.classes) if labelled else 0
    chance = 100 / classes if classes > 1 else None
    return indistinct(values, chance, inp.read, "top-1" if labelled else "agreement")


def _result(req: SensitivityRequest, inp: _Inputs, labelled: bool, stages: dict) -> dict:
    """The ``edgeprune.accuracy.sensitivity`` dict."""
    source = inp.source
    dense = inp.metric(inp.dense_logits, labelled)
    return {
        "schema": SENSITIVITY_SCHEMA,
        "version": SENSITIVITY_VERSION,
        "created": now_utc(),
        "metric": "top1" if labelled else "agreement_with_dense",
        "metric_description": (
            "top-1 accuracy (%) on the labelled image folder"
            if labelled
            else "top-1 agreement (%) with the dense backbone"
            + (" (no labels in the folder)" if inp.labels is None else " (--metric agreement)")
        ),
        "dense": dense,
        "stages": stages,
        "indistinct": _indistinct(inp, labelled, dense, stages),
        "source": source.describe(),
        "arch": source.arch.name,
        "method": source.method.name,
        "locs": list(inp.locs),
        "ratio_semantics": (
            "cumulative: a fraction of the original patches; other stages keep all they get"
            if source.method.cumulative
            else "relative to the stage's input; other stages at 1.0"
        ),
        "images": {
            **inp.images.describe(),
            "read": inp.read,
            "skipped_unreadable": inp.skipped,
        },
        "preprocess": inp.pre.to_dict(),
        "notes": list(source.notes),
    }


def measure_to_file(
    req: SensitivityRequest,
    out: Path,
    force: bool = False,
    resume: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """``edgeprune sensitivity``: measure the curves and write them to ``out`` (with
    ``resume``, progress is kept in ``<out>.partial.json`` and a rerun continues it).
    Under torchrun every process measures its share; rank 0 alone writes."""

    ins = {"SRC": req.src, "--images": req.images}
    partial = resume_path(Path(out)) if resume else None
    outs = {
        "--out": Output(Path(out), ".json"),
        "the resume file": partial and Output(partial, ".json", resumed=True),
    }
    check_outputs(outs, ins, force)
    world = distributed.start(torch.device("cpu"))  # under torchrun: share the images
    try:
        data = measure(req, partial, progress, world)
        if world.main:
            write_json_atomic(out, data)
        world.barrier()  # the run ends together, the file written
    finally:
        distributed.stop(world)
    return data
