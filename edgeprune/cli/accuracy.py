"""The accuracy commands (issue 15): ``demo-images``, ``evaluate``, ``sensitivity``,
``finetune``. Thin like ``cli.py``, which registers them on its app: each parses its
options (``cli_options.py``), calls one library function and renders (``render.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from edgeprune.cli import options as o
from edgeprune.render.tables import progress

out = Console()
err = Console(stderr=True, highlight=False, soft_wrap=True)


def demo_images(
    folder: o.DemoFolderArg,
    classes: o.ClassesOpt = 4,
    per_class: o.PerClassOpt = 8,
    size: o.SizeOpt = 256,
    seed: o.DemoSeedOpt = 0,
) -> None:
    """Write a small ImageNet-style folder of synthetic images (no dataset download)."""
    from edgeprune.core.images import write_demo_images

    imgs = write_demo_images(folder, classes, per_class, size, seed)
    out.print(f"[green]wrote[/] {len(imgs.files)} images in {len(imgs.classes)} classes: {folder}")


@o.grouped
def evaluate(
    model: o.ModelArg,
    images: o.EvalImagesOpt,
    reference: o.ReferenceOpt = None,
    limit: o.LimitOpt = None,
    batch: o.EvalBatchOpt = 16,
    runtime: o.RuntimeOpt = None,
    threads: o.EvalThreadsOpt = None,
    pruning: o.Pruning = o.Pruning(),
    pre: o.Preprocess = o.Preprocess(),
    as_json: o.JsonOpt = False,
) -> None:
    """Top-1/top-5 on an image folder and agreement (top-1, KL, max logit diff) with references."""
    from edgeprune.accuracy.evaluate import EvalRequest
    from edgeprune.accuracy.evaluate import evaluate as run_evaluate

    req = EvalRequest(model, images, reference, limit, batch, runtime, threads, pruning.heads)
    req.method, req.keep, req.locs = pruning.method, pruning.keep, pruning.locs
    pre.into(req)
    with progress(err, "evaluating", bar=True) as step:
        rep = run_evaluate(req, lambda i, n: step("evaluating", i, n))
    if as_json:
        print(json.dumps(rep.to_dict()))
        return
    from edgeprune.render.tables import print_evaluation

    print_evaluation(rep.to_dict(), out, err)


@o.grouped
def sensitivity(
    src: o.SrcArg,
    images: o.EvalImagesOpt,
    out_path: o.SensOutOpt = Path("sensitivity.json"),
    grid: o.SensGridOpt = None,
    limit: o.LimitOpt = None,
    batch: o.EvalBatchOpt = 16,
    method: o.MethodOpt = None,
    locs: o.LocsOpt = None,
    heads: o.HeadsOpt = None,
    pre: o.Preprocess = o.Preprocess(),
    metric: o.MetricOpt = None,
    threads: o.TorchThreadsOpt = None,
    resume: o.SensResumeOpt = False,
    force: o.ForceOpt = False,
) -> None:
    """Accuracy per pruning stage and keep ratio (others not pruning): the file that
    'budget --sensitivity' reads. Top-1 when labelled, else agreement with dense."""
    from edgeprune.accuracy.sensitivity import SensitivityRequest, measure_to_file, parse_grid
    from edgeprune.core.parsing import parse_ints
    from edgeprune.profiling.resume import resume_path

    req = SensitivityRequest(src, images, parse_grid(grid), limit, batch, heads)
    pre.into(req)
    req.method, req.locs, req.metric = method, parse_ints(locs, "--locs"), metric
    req.threads = threads
    try:
        with progress(err, "sensitivity", bar=True) as step:
            data = measure_to_file(req, out_path, force, resume, step)
    except KeyboardInterrupt:
        if resume and resume_path(out_path).exists():
            kept = resume_path(out_path)
            err.print(f"note: progress kept in {kept}; rerun with --resume", markup=False)
        raise
    for n in data["notes"]:
        err.print(f"[yellow]note:[/] {n}")
    from edgeprune.render.tables import sensitivity_lines

    for line in sensitivity_lines(out_path, data):
        out.print(line)


def finetune(
    src: o.SrcArg,
    images: o.EvalImagesOpt,
    out_path: o.CkptOutOpt,
    profile: o.FtProfileOpt = None,
    target_ms: o.TargetMsOpt = None,
    budget: o.BudgetOpt = None,
    steps: o.StepsOpt = 100,
    batch: o.StepBatchOpt = 8,
    lr: o.LrOpt = 3e-3,
    backbone_lr_scale: o.BackboneLrOpt = 0.01,
    latency_weight: o.LatWeightOpt = 10.0,
    shape: o.ShapeOpt = "squared",
    locs: o.LocsOpt = None,
    device: o.TrainDeviceOpt = "cpu",
    threads: o.TorchThreadsOpt = None,
    limit: o.LimitOpt = None,
    heads: o.HeadsOpt = None,
    seed: o.TrainSeedOpt = 0,
    force: o.ForceOpt = False,
    as_json: o.JsonOpt = False,
) -> None:
    """DynamicViT fine-tuning (dense teacher, KL distillation, Gumbel keep masks) with the
    latency-aware sparsity loss in place of the keep-ratio MSE; logs predicted ms per step."""
    from edgeprune.core.parsing import parse_ints
    from edgeprune.render.tables import finetune_lines, step_logger
    from edgeprune.training.finetune import FinetuneRequest, finetune_to_file

    req = FinetuneRequest(src, images, profile, budget, target_ms, steps, batch, lr)
    req.backbone_lr_scale, req.latency_weight, req.shape = backbone_lr_scale, latency_weight, shape
    req.locs, req.device, req.seed = parse_ints(locs, "--locs"), device, seed
    req.limit, req.heads, req.threads = limit, heads, threads
    res = finetune_to_file(req, out_path, force, None if as_json else step_logger(out, steps))
    if as_json:
        d = {**res.to_dict(), "checkpoint": str(out_path)}
        print(json.dumps({**d, "predicted_ms_per_step": [s.predicted_ms for s in res.steps]}))
        return
    for n in res.notes:
        err.print(f"[yellow]note:[/] {n}")
    for line in finetune_lines(res, out_path):
        out.print(line, soft_wrap=True)


COMMANDS = {
    "demo-images": demo_images,
    "evaluate": evaluate,
    "sensitivity": sensitivity,
    "finetune": finetune,
}
