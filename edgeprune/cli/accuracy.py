"""The accuracy commands: ``demo-images`` (a synthetic image folder), ``evaluate`` a model or
artifact on images, ``sensitivity`` (top-1 per pruning stage and keep ratio)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeprune.cli import groups as g
from edgeprune.cli import options as o
from edgeprune.cli.console import err, out, print_json, progress
from edgeprune.core import ranks
from edgeprune.core.errors import EdgepruneError
from edgeprune.render.tables import print_evaluation, sensitivity_lines


def demo_images(
    *,
    folder: o.DemoFolderArg,
    classes: o.ClassesOpt = 4,
    per_class: o.PerClassOpt = 8,
    size: o.SizeOpt = 256,
    seed: o.DemoSeedOpt = 0,
    val_per_class: o.ValPerClassOpt = None,
) -> None:
    """Write a small ImageNet-style folder of synthetic images (no dataset download);
    with --val-per-class, FOLDER/train and FOLDER/val for finetune --data."""
    from edgeprune.core.images import write_demo_dataset, write_demo_images

    if val_per_class is None:
        imgs = write_demo_images(folder, classes, per_class, size, seed)
        out.print(
            f"[green]wrote[/] {len(imgs.files)} images in {len(imgs.classes)} classes: {folder}"
        )
        return
    tr, va = write_demo_dataset(folder, classes, per_class, val_per_class, size, seed)
    out.print(f"[green]wrote[/] {len(tr.files)} + {len(va.files)} images in {folder}/train, /val")


@g.grouped
def evaluate(
    *,
    model: o.ModelArg,
    images: o.EvalImagesOpt,
    reference: o.ReferenceOpt = None,
    limit: o.LimitOpt = None,
    batch: o.EvalBatchOpt = 16,
    runtime: o.RuntimeOpt = None,
    threads: o.EvalThreadsOpt = None,
    pruning: g.Pruning = g.Pruning(),
    pre: g.Preprocess = g.Preprocess(),
    no_verify_hash: o.NoVerifyHashOpt = False,
    as_json: o.JsonOpt = False,
) -> None:
    """Top-1/top-5 on an image folder, and agreement with references.

    Agreement: top-1, KL and max logit difference against each reference."""
    from edgeprune.accuracy.evaluate import EvalRequest
    from edgeprune.accuracy.evaluate import evaluate as run_evaluate

    with _rank_zero("evaluating") as step:
        req = EvalRequest(
            model=model, images=images, reference=reference, limit=limit, batch=batch,
            runtime=runtime, threads=threads, heads=pruning.heads, method=pruning.method,
            keep=pruning.keep, locs=pruning.locs, verify_hash=not no_verify_hash,
        )  # fmt: skip
        pre.into(req)
        rep = run_evaluate(req, step and (lambda i, n: step("evaluating", i, n)))
    if ranks.other_rank():  # under torchrun, rank 0 alone prints
        return
    if as_json:
        print_json(rep.to_dict())
        return

    print_evaluation(rep.to_dict(), out, err)


@g.grouped
def sensitivity(
    *,
    src: o.SrcArg,
    images: o.EvalImagesOpt,
    out_path: o.SensOutOpt = Path("sensitivity.json"),
    grid: o.SensGridOpt = None,
    limit: o.LimitOpt = None,
    batch: o.EvalBatchOpt = 16,
    method: o.MethodOpt = None,
    locs: o.LocsOpt = None,
    heads: o.HeadsOpt = None,
    pre: g.Preprocess = g.Preprocess(),
    metric: o.MetricOpt = None,
    threads: o.TorchThreadsOpt = None,
    resume: o.SensResumeOpt = False,
    force: o.ForceOpt = False,
) -> None:
    """Accuracy per pruning stage and keep ratio, for 'budget --sensitivity'.

    Each stage pruned alone; top-1 when the images are labelled, else agreement with dense."""
    from edgeprune.accuracy.sensitivity import SensitivityRequest, measure_to_file, parse_grid
    from edgeprune.core.parsing import parse_ints
    from edgeprune.profiling.resume import resume_path

    try:
        with _rank_zero("sensitivity") as step:
            req = SensitivityRequest(
                src=src, images=images, grid=parse_grid(grid), limit=limit, batch=batch,
                heads=heads, method=method, locs=parse_ints(locs, "--locs"), metric=metric,
                threads=threads,
            )  # fmt: skip
            pre.into(req)
            data = measure_to_file(req, out_path, force, resume, step)
    except KeyboardInterrupt:  # rank 0 only (see _rank_zero)
        if resume and resume_path(out_path).exists():
            kept = resume_path(out_path)
            err.print(f"note: progress kept in {kept}; rerun with --resume", markup=False)
        raise
    if not ranks.other_rank():  # under torchrun, rank 0 alone prints
        _print_sensitivity(out_path, data)


def _print_sensitivity(out_path: Path, data: dict) -> None:
    for n in data["notes"]:
        err.print(f"[yellow]note:[/] {n}")
    if data.get("indistinct"):
        err.print(
            f"warning: these measurements cannot tell schedules apart ({data['indistinct']}); "
            "recorded in the file: 'budget --sensitivity' will weigh kept tokens instead",
            markup=False, style="yellow",
        )  # fmt: skip
    for line in sensitivity_lines(out_path, data):
        out.print(line)


@contextlib.contextmanager
def _rank_zero(label: str) -> Iterator[Callable[..., None] | None]:
    """A progress bar on rank 0 (or the one process); on torchrun's other processes
    none, and their refusals and interruptions silent (exit codes kept): every process
    meets the same ones (before its share of the images, or after the gather), so
    rank 0's line says it once."""
    if not ranks.other_rank():
        with progress(label, bar=True) as step:
            yield step
        return
    try:
        yield None
    except EdgepruneError as e:  # SystemExit: past the app's handler, which would print
        ranks.quiet_exit(e.exit_code)
    except KeyboardInterrupt:
        ranks.quiet_exit(130, linger_s=0)


COMMANDS = {
    "demo-images": demo_images,
    "evaluate": evaluate,
    "sensitivity": sensitivity,
}
