"""``edgeprune finetune``: train a pruned model to a device budget, on one process or
under ``torchrun``, with the field's recipe and the latency-aware sparsity loss.

Every method trains in its own training form (``edgeprune.training.forms``) over the
static model's parameters, with what its authors train with, except that the ratio or
depth target is replaced by the budget: DynamicViT, SPViT and A-ViT learn their schedule
under ``LatencyAwareSparsityLoss`` (aiming at the budget's aim, target minus margin);
EViT and ToMe train at the budget's keep rate / r (EViT's keep rate warmed up from 1).
After every epoch: top-1 on ``val/`` of the static model at the schedule read off the
trained form, that schedule's predicted latency, and a checkpoint (the method's key
layout, the schedule, the training state), written atomically; a JSONL log and a PNG.

    torchrun --nproc-per-node 8 -m edgeprune finetune deit_small.pth \
        --data imagenet/ --budget s20.json --epochs 30 --batch 1024 --out ft.pth
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from edgeprune.accuracy.evaluate import dense_backbone, torch_threads
from edgeprune.core import distributed
from edgeprune.core.atomic import check_outputs, write_text_atomic
from edgeprune.core.distributed import World
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import MethodConfig
from edgeprune.core.parsing import parse_ints
from edgeprune.core.plan import dense_plan
from edgeprune.latency.table import untrusted_warning
from edgeprune.render.training import plot_training
from edgeprune.training import recipe, state
from edgeprune.training.data import Data, Recipe, load_data
from edgeprune.training.device import train_device
from edgeprune.training.loop import Parts, sample_keys, step
from edgeprune.training.loss import LatencyAwareSparsityLoss
from edgeprune.training.target import Target, check_reachable, from_budget, from_table, student


@dataclass(kw_only=True)
class FinetuneRequest:
    """What to train (SRC, images in ImageNet layout, a budget or a table with a target)
    and how (epochs, global batch, the recipe's settings)."""

    src: str
    data: Path
    budget: Path | None = None
    profile: Path | None = None  # a latency table, with target_ms
    target_ms: float | None = None
    method: str | None = None  # with --profile, for a dense SRC
    locs: tuple[int, ...] | None = None
    epochs: int = 30
    batch: int = 64  # global: split over the processes
    steps_per_epoch: int | None = None  # at most this many steps an epoch (quick runs)
    optim: recipe.Optim = field(default_factory=recipe.Optim)
    data_recipe: Recipe = field(default_factory=Recipe)
    latency_weight: float = 10.0
    shape: str = "squared"
    distill_weight: float = 0.5
    schedule_images: int = 1000  # val images the schedule is read from (every process)
    limit: int | None = None  # at most this many images of train/ and of val/
    device: str = "cpu"
    seed: int = 0
    workers: int = 0
    heads: int | None = None
    threads: int | None = None
    resume: Path | None = None

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        keep = (
            "src",
            "budget",
            "profile",
            "target_ms",
            "method",
            "locs",
            "epochs",
            "batch",
            "steps_per_epoch",
            "limit",
            "latency_weight",
            "shape",
            "distill_weight",
            "seed",
        )
        d = {k: _plain(getattr(self, k)) for k in keep}
        d["data"] = str(Path(self.data).resolve())
        d.update({f"optim.{k}": v for k, v in asdict(self.optim).items()})
        d.update({f"recipe.{k}": v for k, v in asdict(self.data_recipe).items()})
        return d


def finetune_request(**o) -> FinetuneRequest:
    """The request from ``finetune``'s flat command-line options (their names)."""
    optim = recipe.Optim(
        lr=o["lr"], backbone_lr_scale=o["backbone_lr_scale"], weight_decay=o["weight_decay"],
        warmup_epochs=o["warmup_epochs"], min_lr=o["min_lr"], clip_grad=o["clip_grad"],
        mixup=o["mixup"], cutmix=o["cutmix"], smoothing=o["smoothing"], ema_decay=o["ema"],
        amp=o["amp"],
    )  # fmt: skip
    aa = o["aa"]
    data_recipe = Recipe(auto_augment=None if aa.lower() == "none" else aa, reprob=o["reprob"],
                         augment=not o["no_augment"])  # fmt: skip
    keys = ("src", "data", "budget", "profile", "target_ms", "method", "epochs", "batch",
            "steps_per_epoch", "latency_weight", "shape", "distill_weight", "device", "seed",
            "workers", "limit", "heads", "threads", "resume")  # fmt: skip
    return FinetuneRequest(
        **{k: o[k] for k in keys}, locs=parse_ints(o["locs"], "--locs"), optim=optim,
        data_recipe=data_recipe,
    )  # fmt: skip


def _plain(v: object) -> object:
    return str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v


@dataclass(kw_only=True)
class Epoch:
    """One epoch's summary (a line of the JSONL log with ``"epoch_end": true``)."""

    epoch: int
    loss: float
    top1: float
    schedule: dict  # locs, keep_ratios, options: what the checkpoint records
    predicted_ms: float  # of the static plan at that schedule
    train_predicted_ms: float | None  # of the training masks (mean over the epoch)
    seconds: float
    images_per_s: float


@dataclass(kw_only=True)
class FinetuneResult:
    method: str
    arch: str
    aim_ms: float
    target_ms: float
    dense_ms: float
    start_ms: float  # predicted for the schedule before training
    epochs: list[Epoch]
    processes: int
    device: str
    checkpoint: str
    resumed_from: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    main: bool = True  # rank 0 (the process that prints)

    @property
    def final_ms(self) -> float:
        return self.epochs[-1].predicted_ms if self.epochs else self.start_ms

    def to_dict(self) -> dict:
        d = asdict(self)
        d["final_ms"] = self.final_ms
        d["within_aim"] = abs(self.final_ms - self.aim_ms) / self.aim_ms
        return d


def outputs(out: Path) -> dict[str, Path]:
    """The run's files: the checkpoint, its JSONL log and its PNG."""
    out = Path(out)
    return {"--out": out, "log": out.with_suffix(".jsonl"), "plot": out.with_suffix(".png")}


Progress = Callable[[int, int, int, dict], None]  # (epoch, step, steps per epoch, line)


def finetune_to_file(
    req: FinetuneRequest, out: Path, force: bool = False, progress: Progress | None = None
) -> FinetuneResult:
    """Train and write the checkpoint (after every epoch), its log and its PNG; under
    torchrun, on every process (rank 0 alone writes and reports)."""
    check_request(req)
    world = distributed.start(train_device(req.device))
    try:
        with torch_threads(req.threads):
            return _run(req, Path(out), force, progress, world)
    finally:
        distributed.stop(world)


def check_request(req: FinetuneRequest) -> None:
    """Refuse every number out of range before any work."""
    counts = {
        "--epochs": req.epochs,
        "--batch": req.batch,
        "--steps-per-epoch": req.steps_per_epoch,
        "--schedule-images": req.schedule_images,
        "--limit": req.limit,
    }
    for flag, n in counts.items():
        if n is not None and not 1 <= n <= 10**9:
            raise EdgepruneError(f"{flag} {n} must be at least 1")
    if not 0 <= req.workers <= 256:
        raise EdgepruneError(f"--workers {req.workers} must be between 0 and 256")
    o = req.optim
    for flag, x in {"--lr": o.lr, "--target-ms": req.target_ms}.items():
        if x is not None and not (_finite(x) and x > 0):
            raise EdgepruneError(f"{flag} {x} is not a positive number")
    weights = {
        "--latency-weight": req.latency_weight,
        "--backbone-lr-scale": o.backbone_lr_scale,
        "--distill-weight": req.distill_weight,
        "--weight-decay": o.weight_decay,
        "--warmup-epochs": o.warmup_epochs,
        "--min-lr": o.min_lr,
        "--mixup": o.mixup,
        "--cutmix": o.cutmix,
        "--clip-grad": o.clip_grad or 0.0,
        "--reprob": req.data_recipe.reprob,
    }
    for flag, x in weights.items():
        if not (_finite(x) and x >= 0):
            raise EdgepruneError(f"{flag} {x} must be a finite number ≥ 0")
    if not 0 <= o.smoothing < 1 or not 0 <= req.data_recipe.reprob <= 1:
        raise EdgepruneError("--smoothing must be in [0, 1) and --reprob in [0, 1]")
    if o.ema_decay is not None and not (_finite(o.ema_decay) and 0 < o.ema_decay < 1):
        raise EdgepruneError(f"--ema {o.ema_decay} must be between 0 and 1")
    if o.amp not in recipe.AMP:
        raise EdgepruneError(f"--amp {o.amp} is not one of {', '.join(recipe.AMP)}")
    if (req.profile is None) == (req.budget is None):
        raise EdgepruneError("give exactly one of --budget or --table (with --target-ms)")
    if req.profile is not None and req.target_ms is None:
        raise EdgepruneError("--table needs --target-ms", "or give --budget FILE")
    if not 0 <= req.seed < 2**63:
        raise EdgepruneError(f"--seed {req.seed} must be between 0 and 2^63 - 1")


def _finite(x: object) -> bool:
    return (
        isinstance(x, int | float) and not isinstance(x, bool) and x == x and abs(x) != float("inf")
    )


def _target(req: FinetuneRequest) -> Target:
    if req.budget is not None:
        if req.locs is not None or req.method is not None:
            raise EdgepruneError("--budget sets the method and locations", "drop --method/--locs")
        return from_budget(req.src, req.budget, req.heads)
    return from_table(req.src, req.profile, req.target_ms, req.method, req.locs, req.heads)


def _criterion(req: FinetuneRequest, target: Target, form) -> LatencyAwareSparsityLoss | None:
    """The latency-aware sparsity loss at the aim (learned schedules), the unreachable
    aim refused; None for a fixed schedule."""
    if not form.learns_schedule:
        return None
    crit = LatencyAwareSparsityLoss(
        target.latency,
        target_ms=target.aim_ms,
        method=target.method.name,
        locs=target.config.prune_locs,
        weight=req.latency_weight,
        shape=req.shape,
        extra_tokens=form.extra_tokens(),
    )
    crit.latency.check_arch(target.source.arch)
    one = torch.zeros(1, target.source.arch.num_patches)
    one[0, 0] = 1.0  # one patch token kept at every stage
    floor = crit.predicted_ms([one for _ in range(crit.n_stages)])
    check_reachable(target, float(floor))
    return crit


def _parts(req: FinetuneRequest, target: Target, form, crit, data: Data, world: World) -> Parts:
    """The form's optimiser, EMA, teacher and losses on this process's device."""
    model = form.model
    mixing = req.optim.mixup > 0 or req.optim.cutmix > 0
    if mixing and (req.batch // world.size) % 2:
        raise EdgepruneError(
            f"Mixup/CutMix pair the images of a batch: {req.batch // world.size} a process is odd",
            "give an even --batch per process, or --mixup 0 --cutmix 0",
        )
    iters = _iters(req, data)
    opt, sched = recipe.optimizer(
        model, form.selector_parameters(), req.optim, epochs=req.epochs, iters=iters
    )
    teacher = None
    if form.distills:
        teacher = dense_backbone(target.source).to(world.device).eval()
        teacher.requires_grad_(False)
    ddp = DistributedDataParallel(form) if world.distributed else form
    parts = Parts(
        form=form,
        ddp=ddp,
        teacher=teacher,
        crit=crit,
        criterion=recipe.criterion(req.optim),
        mixup=recipe.mixup(req.optim, len(data.classes)),
        opt=opt,
        sched=sched,
        ema=recipe.ema(model, req.optim),
        scaler=recipe.scaler(req.optim.amp, world.device),
        autocast=recipe.autocast(req.optim.amp, world.device),
        clip_grad=req.optim.clip_grad,
        distill_weight=req.distill_weight,
        world=world,
    )
    return parts


def _iters(req: FinetuneRequest, data: Data) -> int:
    n = len(data.train_loader)
    return min(n, req.steps_per_epoch) if req.steps_per_epoch else n


def _run(req: FinetuneRequest, out: Path, force: bool, progress: Progress | None, world: World):
    files = outputs(out)
    ins = {"SRC": req.src, "--data": req.data, "--budget": req.budget, "--table": req.profile}
    if req.resume is None or Path(req.resume).resolve() != out.resolve():
        check_outputs(files, ins, force or req.resume is not None)
    resumed = _resume_state(req)  # another run's checkpoint: refused before any work
    target = _target(req)
    torch.manual_seed(req.seed)
    model, fresh = student(target, req.seed)
    form = target.form(model).to(world.device).train()
    crit = _criterion(req, target, form)  # an unreachable budget: refused here
    data = _data(req, target, world)
    parts = _parts(req, target, form, crit, data, world)
    history, start = _resume(resumed, parts)
    arch = target.source.arch
    meth = target.method
    start_cfg = target.form.start_config(target.config, target.source.arch.num_patches)
    res = FinetuneResult(
        method=meth.name,
        arch=arch.name,
        aim_ms=target.aim_ms,
        target_ms=target.target_ms,
        dense_ms=float(target.latency.predict(dense_plan(arch)).total_ms),
        start_ms=float(target.latency.predict(meth.token_plan(arch, start_cfg)).total_ms),
        epochs=[_epoch_of(e) for e in history if e.get("epoch_end")],
        processes=world.size,
        device=str(world.device),
        checkpoint=str(out),
        resumed_from=start,
        notes=_notes(target, fresh),
        main=world.main,
        warnings=[w for w in [untrusted_warning(target.latency.table, target.latency.source)] if w],
    )
    for epoch in range(start, req.epochs):
        ep, lines = _epoch(req, target, parts, data, epoch, progress)
        history += lines
        res.epochs.append(ep)
        _save(req, target, parts, out, ep, history)
    return res


def _recipe(req: FinetuneRequest, img_size: int) -> Recipe:
    return Recipe(**{**asdict(req.data_recipe), "img_size": img_size})


def _resume_state(req: FinetuneRequest) -> state.Resume | None:
    """``--resume``'s checkpoint, checked to be this run's (None without it)."""
    if req.resume is None:
        return None
    r = state.load(Path(req.resume))
    state.check_same_run(r, req.fingerprint(), Path(req.resume))
    return r


def _resume(r: state.Resume | None, parts: Parts) -> tuple[list[dict], int]:
    """(history, first epoch to run): the resumed run's state loaded, or a fresh start."""
    if r is None:
        return [], 0
    parts.form.model.load_state_dict(r.model)
    parts.opt.load_state_dict(r.optimizer)
    if parts.ema is not None and r.ema is not None:
        parts.ema.load_state_dict(r.ema)
    if parts.scaler is not None and r.scaler is not None:
        parts.scaler.load_state_dict(r.scaler)
    return list(r.history), r.epoch


def _data(req: FinetuneRequest, target: Target, world: World) -> Data:
    """The images, checked, sharded; as many classes as the model has outputs."""
    arch = target.source.arch
    data = load_data(Path(req.data), _recipe(req, arch.img_size), batch=req.batch, world=world,
                     seed=req.seed, workers=req.workers, max_images=req.limit)  # fmt: skip
    if len(data.classes) != arch.num_classes:
        raise EdgepruneError(
            f"{req.data} has {len(data.classes)} classes; {req.src} classifies {arch.num_classes}"
        )
    return data


def _notes(target: Target, fresh: bool) -> list[str]:
    # a dense SRC is read as dense; the method to train is named (--method, the budget)
    notes = [n for n in target.source.notes if "holds no pruning-method keys" not in n]
    if fresh:
        notes.append(f"new {target.method.name} selectors, initialised to keep every token")
    return notes


def _epoch(req, target: Target, parts: Parts, data: Data, epoch: int, progress):
    """Train one epoch, then evaluate: (its summary, its log lines)."""
    data.set_epoch(epoch)
    torch.manual_seed(req.seed * 1_000_003 + epoch)  # Mixup's draws and anything else
    iters = _iters(req, data)
    lines: list[dict] = []
    t0 = time.perf_counter()
    for i, (x, y, index) in enumerate(data.train_loader):
        if i >= iters:
            break
        parts.form.set_progress((epoch * iters + i) / (req.epochs * iters))
        parts.sched.step_update(epoch * iters + i)
        keys = sample_keys(req.seed, epoch, index)
        x, y = x.to(parts.world.device), y.to(parts.world.device)
        line = step(parts, x, y, keys, f"epoch {epoch + 1}, step {i + 1}")
        line = {"epoch": epoch + 1, "step": epoch * iters + i + 1, **line}
        lines.append(line)
        if progress is not None and parts.world.main:
            progress(epoch, i, iters, line)
    secs = time.perf_counter() - t0
    cfg, top1, ms = _evaluate(req, target, parts, data)
    pm = [ln["predicted_ms"] for ln in lines if "predicted_ms" in ln]
    ep = Epoch(
        epoch=epoch + 1,
        loss=sum(ln["loss"] for ln in lines) / max(1, len(lines)),
        top1=top1,
        schedule={
            "locs": list(cfg.prune_locs),
            "keep_ratios": list(cfg.keep_ratios),
            "options": state.record("", cfg, {}, 0, 0.0)["options"],
        },
        predicted_ms=ms,
        train_predicted_ms=sum(pm) / len(pm) if pm else None,
        seconds=secs,
        images_per_s=iters * req.batch / secs if secs > 0 else 0.0,
    )
    return ep, [*lines, {**asdict(ep), "epoch_end": True}]


def _epoch_of(line: dict) -> Epoch:
    return Epoch(**{k: v for k, v in line.items() if k != "epoch_end"})


def _evaluate(req, target: Target, parts: Parts, data: Data):
    """The schedule read off the trained form, the top-1 on ``val/`` of the static model
    at that schedule (what ``export`` deploys), and its predicted latency."""
    form, world = parts.form, parts.world
    form.sample_keys = None
    n = min(len(data.val), req.schedule_images)
    # the global batch's size on every process: the same noise draws at any world size
    subset = DataLoader(Subset(data.val, range(n)), batch_size=req.batch)
    cfg = form.read_schedule(x.to(world.device) for x, _ in subset)
    meth, arch = target.method, target.source.arch
    plan = meth.token_plan(arch, cfg)
    static = meth.build(arch, plan)
    static.load_state_dict(form.model.state_dict())
    static = static.to(world.device).eval()
    hits = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for x, y in data.val_loader:
            pred = static(x.to(world.device)).argmax(-1).cpu()
            hits += torch.tensor([float((pred == y).sum()), float(len(y))], dtype=torch.float64)
    hits = world.sum(hits.to(world.device)).cpu()
    top1 = 100.0 * float(hits[0]) / max(1.0, float(hits[1]))
    return cfg, top1, float(target.latency.predict(plan).total_ms)


def _save(req, target: Target, parts: Parts, out: Path, ep: Epoch, history: list[dict]) -> None:
    """Rank 0 writes the epoch's checkpoint, the log and the PNG (each atomically); the
    others wait for it."""
    world = parts.world
    if world.main:
        cfg = MethodConfig(
            tuple(ep.schedule["locs"]),
            tuple(ep.schedule["keep_ratios"]),
            dict(ep.schedule["options"]),
        )
        rec = state.record(target.method.name, cfg, target.trained_for, ep.epoch, ep.predicted_ms)
        resume = {
            "epoch": ep.epoch,
            "optimizer": parts.opt.state_dict(),
            "ema": parts.ema.state_dict() if parts.ema is not None else None,
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            "fingerprint": req.fingerprint(),
            "history": history,
        }
        state.save(out, model=parts.form.model.state_dict(), rec=rec, resume=resume)
        files = outputs(out)
        write_text_atomic(files["log"], "".join(json.dumps(ln) + "\n" for ln in history))
        plot_training(history, target.aim_ms, files["plot"])
    world.barrier()
