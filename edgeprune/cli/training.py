"""The training command: ``finetune`` a pruned model to a device budget with the
latency-aware sparsity loss, on one process or under ``torchrun``."""

from __future__ import annotations

import os

import typer

from edgeprune.cli import options as o
from edgeprune.cli import training_options as t
from edgeprune.cli.console import err, out, print_json
from edgeprune.core.errors import EdgepruneError
from edgeprune.render.tables import print_finetune, training_progress


def finetune(
    ctx: typer.Context,
    *,
    src: o.SrcArg,
    data: t.DataOpt,
    out_path: t.CkptOutOpt,
    budget: o.BudgetOpt = None,
    profile: t.FtTableOpt = None,
    target_ms: o.TargetMsOpt = None,
    method: o.MethodOpt = None,
    locs: o.LocsOpt = None,
    epochs: t.EpochsOpt = 30,
    batch: t.StepBatchOpt = 64,
    steps_per_epoch: t.StepsPerEpochOpt = None,
    lr: t.LrOpt = 1e-3,
    backbone_lr_scale: t.BackboneLrOpt = 0.01,
    weight_decay: t.WeightDecayOpt = 0.05,
    warmup_epochs: t.WarmupOpt = 0.0,
    min_lr: t.MinLrOpt = 1e-5,
    clip_grad: t.ClipOpt = None,
    mixup: t.MixupOpt = 0.8,
    cutmix: t.CutmixOpt = 1.0,
    smoothing: t.SmoothingOpt = 0.1,
    aa: t.AaOpt = "rand-m9-mstd0.5-inc1",
    reprob: t.ReprobOpt = 0.25,
    no_augment: t.NoAugmentOpt = False,
    ema: t.EmaOpt = None,
    amp: t.AmpOpt = "none",
    latency_weight: t.LatWeightOpt = 10.0,
    shape: t.ShapeOpt = "squared",
    distill_weight: t.DistillWeightOpt = 0.5,
    device: t.TrainDeviceOpt = "cpu",
    workers: t.WorkersOpt = 0,
    limit: o.LimitOpt = None,
    threads: o.TorchThreadsOpt = None,
    heads: o.HeadsOpt = None,
    seed: t.TrainSeedOpt = 0,
    resume: t.FtResumeOpt = None,
    force: o.ForceOpt = False,
    as_json: o.JsonOpt = False,
) -> None:
    """Fine-tune a pruned model to a device budget (every method; torchrun for many)."""
    opts = {k: v for k, v in ctx.params.items() if k not in ("out_path", "force", "as_json")}
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone prints
    with training_progress(err if main and not as_json else None) as progress:
        res = _train(opts, out_path, force, progress)
    if res.main and as_json:
        print_json(res.to_dict())
    elif res.main:
        print_finetune(res, out_path, out, err)


def _train(opts: dict, out_path, force: bool, progress):
    try:  # timm and torchvision: the train extra
        from edgeprune.training.finetune import finetune_request, finetune_to_file
    except ImportError as e:
        raise EdgepruneError(f"finetune needs {e.name}", "pip install 'edgeprune[train]'") from None
    return finetune_to_file(finetune_request(**opts), out_path, force, progress)


COMMANDS = {"finetune": finetune}
