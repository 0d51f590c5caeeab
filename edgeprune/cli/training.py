"""The training command: ``finetune`` a pruned model to a device budget with the
latency-aware sparsity loss."""

from __future__ import annotations

from edgeprune.cli import options as o
from edgeprune.cli.console import err, out, print_json
from edgeprune.render.tables import finetune_lines, step_logger


def finetune(
    *,
    src: o.SrcArg,
    images: o.EvalImagesOpt,
    out_path: o.CkptOutOpt,
    profile: o.FtTableOpt = None,
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
    """Fine-tune a pruned model to a latency table's target (DynamicViT).

    Dense teacher, KL distillation, Gumbel keep masks, with the latency-aware sparsity
    loss in place of the keep-ratio MSE; logs the predicted ms per step."""
    from edgeprune.core.parsing import parse_ints
    from edgeprune.training.finetune import FinetuneRequest, finetune_to_file

    req = FinetuneRequest(
        src=src, images=images, profile=profile, budget=budget, target_ms=target_ms,
        steps=steps, batch=batch, lr=lr, backbone_lr_scale=backbone_lr_scale,
        latency_weight=latency_weight, shape=shape, locs=parse_ints(locs, "--locs"),
        device=device, seed=seed, limit=limit, heads=heads, threads=threads,
    )  # fmt: skip
    res = finetune_to_file(req, out_path, force, None if as_json else step_logger(out, steps))
    if as_json:
        d = {**res.to_dict(), "checkpoint": str(out_path)}
        print_json({**d, "predicted_ms_per_step": [s.predicted_ms for s in res.steps]})
        return
    for n in res.notes:
        err.print(f"[yellow]note:[/] {n}")
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False, style="yellow")
    for line in finetune_lines(res, out_path):
        out.print(line, soft_wrap=True)


COMMANDS = {"finetune": finetune}
