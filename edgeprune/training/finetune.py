"""``edgeprune finetune``: DynamicViT's training loop with the latency-aware sparsity loss.

What DynamicViT's ``main.py`` + ``DistillDiffPruningLoss_dynamic`` do, with one change:
the keep-ratio MSE is replaced by ``LatencyAwareSparsityLoss`` (a device profile and a
target in ms, or a budget file), so the masks are pushed to the token counts whose
*predicted latency on that device* meets the target.

    loss = clf_weight · CE(logits, labels)              (labelled folders only)
         + distill_weight · KL(student ‖ dense teacher)  (logits, batchmean)
         + distill_weight · KL(kept tokens ‖ teacher's)  (final patch features)
         + LatencyAwareSparsityLoss(keep masks)          (in place of ratio_weight · MSE)

The student is the static DynamicViT model's parameters run in training mode
(``edgeprune.training.forms``: Gumbel-hard keep masks with a straight-through gradient,
masked attention); the teacher is the dense backbone (frozen). From a dense SRC (or a
built-in spec) the predictors are new and start by keeping every token, so the
predicted latency starts at the dense value; a DynamicViT checkpoint continues from its
own predictors. Predictors train at ``lr``, the backbone at ``lr · backbone_lr_scale``.

At the end the keep ratios are read off the trained predictors (the mean noiseless
keep decision per stage over the folder, cumulative), the static plan at those ratios
gives the deployed model's predicted latency, and the checkpoint is saved as
``{"model": state_dict}`` in DynamicViT's key layout (plus an ``edgeprune`` record),
which ``edgeprune export CKPT --keep r1,r2,r3`` takes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeprune.accuracy.evaluate import dense_backbone, torch_threads
from edgeprune.budget.file import load_budget
from edgeprune.core.atomic import atomic_path, check_outputs
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import ImageSet, Preprocess, batches, preprocess_for, scan
from edgeprune.core.methods import MethodConfig, get_method
from edgeprune.core.models.deit import init_random_
from edgeprune.core.plan import dense_plan
from edgeprune.core.source import Source, resolve
from edgeprune.latency.table import untrusted_warning
from edgeprune.training.forms import (
    DynamicViTTraining,
    distillation_losses,
    init_keep_all_,
    teacher_forward,
)
from edgeprune.training.loss import LatencyAwareSparsityLoss


@dataclass(kw_only=True)
class FinetuneRequest:
    """What ``edgeprune finetune`` trains: the SRC, the images, the latency target (a
    profile with ``target_ms``, or a budget file) and the training's settings."""

    src: str
    images: Path
    profile: Path | None = None  # a profile (with target_ms) or a budget file
    budget: Path | None = None
    target_ms: float | None = None
    steps: int = 100
    batch: int = 8
    lr: float = 1e-3
    backbone_lr_scale: float = 0.01
    latency_weight: float = 10.0
    shape: str = "squared"
    distill_weight: float = 0.5
    clf_weight: float = 1.0
    tau: float = 1.0
    locs: tuple[int, ...] | None = None
    device: str = "cpu"
    seed: int = 0
    limit: int | None = None
    heads: int | None = None
    resize: int | None = None
    flip: bool = True
    threads: int | None = None  # torch intra-op threads (None: torch's default)


@dataclass(kw_only=True)
class Step:
    """One training step's losses and the latency its masks predict."""

    step: int
    loss: float
    distill: float
    token_distill: float
    ce: float | None
    latency_loss: float
    predicted_ms: float
    keep: list[float]  # mean keep fraction per stage (cumulative)


@dataclass(kw_only=True)
class FinetuneResult:
    """What a fine-tuning run ended with: the keep ratios and their predicted latency."""

    method: str
    arch: str
    locs: tuple[int, ...]
    target_ms: float
    dense_ms: float
    start_ms: float  # predicted from the first step's masks
    keep_ratios: tuple[float, ...]  # read off the trained predictors
    final_ms: float  # predicted for the static plan at keep_ratios
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    images: int = 0
    labelled: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the loss's table is untrusted

    def to_dict(self) -> dict:
        last = self.steps[-1] if self.steps else None
        return {
            "method": self.method,
            "arch": self.arch,
            "locs": list(self.locs),
            "target_ms": self.target_ms,
            "dense_ms": self.dense_ms,
            "start_predicted_ms": self.start_ms,
            "end_predicted_ms_training_masks": last.predicted_ms if last else None,
            "keep_ratios": list(self.keep_ratios),
            "end_predicted_ms": self.final_ms,
            "steps": len(self.steps),
            "seconds": self.seconds,
            "device": self.device,
            "images": self.images,
            "labelled": self.labelled,
            "final_distill_loss": last.distill if last else None,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def _student(
    source: Source, locs: tuple[int, ...] | None, seed: int
) -> tuple[torch.nn.Module, bool]:
    """The DynamicViT static model to train and whether its predictors are new."""

    meth = get_method("dynamicvit")
    if source.method.name == "dynamicvit" and source.kind == "checkpoint":
        if locs is not None and tuple(locs) != tuple(source.config.prune_locs):
            raise EdgepruneError(
                f"--locs {list(locs)} differs from the checkpoint's "
                f"{list(source.config.prune_locs)}"
            )
        return source.model(), False
    if source.method.name not in ("dense", "dynamicvit"):
        raise EdgepruneError(
            f"finetune trains DynamicViT; {source.text} is {source.method.name}",
            "give a dense or DynamicViT SRC",
        )
    locs = tuple(locs) if locs is not None else meth.default_locs
    keep = tuple(1.0 for _ in locs)
    cfg = MethodConfig(locs, keep, {})
    meth.validate(cfg, source.arch)
    model = meth.build(source.arch, meth.token_plan(source.arch, cfg))
    init_random_(model.score_predictor, seed)
    missing = model.load_state_dict(
        {k: v for k, v in source.model().state_dict().items() if not k.startswith("score_")},
        strict=False,
    ).missing_keys
    assert all(k.startswith("score_predictor.") for k in missing), missing
    init_keep_all_(model, seed=seed)
    return model, True


def _latency_loss(req: FinetuneRequest, locs: tuple[int, ...]):
    if (req.profile is None) == (req.budget is None):
        raise EdgepruneError("give exactly one of --profile (with --target-ms) or --budget")
    if req.profile is not None and req.target_ms is None:
        raise EdgepruneError("--profile needs --target-ms", "or give --budget FILE")
    what = req.profile or req.budget
    if not Path(what).exists():
        raise EdgepruneError(f"{'profile' if req.profile else 'budget'} file {what} does not exist")
    return LatencyAwareSparsityLoss(
        what,
        target_ms=req.target_ms,
        method="dynamicvit",
        locs=locs,
        weight=req.latency_weight,
        shape=req.shape,
    )


def _loader(images: ImageSet, pre: Preprocess, batch: int, seed: int) -> Iterator:
    """Endless shuffled batches (x, labels or None); decodes the folder once."""
    parts = list(batches(images, pre, 64))
    if not parts:
        raise EdgepruneError(f"none of the images in {images.root} could be read")
    x = torch.cat([p.images for p in parts])
    y = torch.cat([p.labels for p in parts]) if images.labelled else None
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            if len(idx) < min(batch, len(x)):
                break
            yield x[idx], (y[idx] if y is not None else None)


def finetune(
    req: FinetuneRequest, progress: Callable[[Step, int], None] | None = None
) -> tuple[FinetuneResult, torch.nn.Module]:
    """Train; returns the result and the trained static model (DynamicViT layout)."""

    with torch_threads(req.threads):
        return _finetune(req, progress)


def _finetune(
    req: FinetuneRequest, progress: Callable[[Step, int], None] | None
) -> tuple[FinetuneResult, torch.nn.Module]:
    _check_request(req)
    device = train_device(req.device)
    images = scan(req.images).limit(req.limit)
    source = resolve(req.src, heads=req.heads)
    torch.manual_seed(req.seed)
    locs = req.locs
    if locs is None and req.budget is not None:
        locs = load_budget(req.budget).locs or None  # train the stages the budget names
    student, fresh = _student(source, locs, req.seed)
    locs = tuple(student.plan.prune_locs)
    crit = _latency_loss(req, locs)
    crit.latency.check_arch(source.arch)
    loop = _Loop.start(req, student, _frozen_teacher(source, device), crit, device)
    pre = preprocess_for(source.arch.img_size, req.resize)
    data = _loader(images, pre, req.batch, req.seed)

    dense_ms = float(crit.latency.predict(dense_plan(source.arch)).total_ms)
    steps: list[Step] = []
    t0 = time.perf_counter()
    for i in range(req.steps):
        steps.append(loop.step(i, data))
        if progress is not None:
            progress(steps[-1], req.steps)
    secs = time.perf_counter() - t0
    keep = read_keep_ratios(loop.train, images, pre, req.batch, device)
    meth = get_method("dynamicvit")
    plan = meth.token_plan(source.arch, MethodConfig(locs, keep, {}))
    res = FinetuneResult(
        method="dynamicvit",
        arch=source.arch.name,
        locs=locs,
        target_ms=crit.target_ms,
        dense_ms=dense_ms,
        start_ms=steps[0].predicted_ms,
        keep_ratios=keep,
        final_ms=float(crit.latency.predict(plan).total_ms),
        steps=steps,
        seconds=secs,
        device=str(device),
        images=len(images.files),
        labelled=images.labelled,
        notes=_notes(source, fresh, images),
        warnings=[w for w in [untrusted_warning(crit.latency.table, crit.latency.source)] if w],
    )
    return res, loop.train.model.cpu().eval()


def _check_request(req: FinetuneRequest) -> None:
    """Refuse every number out of range before any work: counts below 1, a learning
    rate or temperature that is not positive, a negative or non-finite weight (a
    negative latency weight would reward exceeding the target)."""
    for flag, n in (("--steps", req.steps), ("--batch", req.batch), ("--limit", req.limit)):
        if n is not None and not 1 <= n <= 10**9:
            raise EdgepruneError(f"{flag} {n} must be at least 1")
    positive = {"--lr": req.lr, "tau": req.tau, "--target-ms": req.target_ms}
    for flag, x in positive.items():
        if x is not None and not (_finite(x) and x > 0):
            raise EdgepruneError(f"{flag} {x} is not a positive number")
    weights = {
        "--latency-weight": req.latency_weight,
        "--backbone-lr-scale": req.backbone_lr_scale,
        "distill_weight": req.distill_weight,
        "clf_weight": req.clf_weight,
    }
    for flag, x in weights.items():
        if not (_finite(x) and x >= 0):
            raise EdgepruneError(f"{flag} {x} must be a finite number ≥ 0")
    if not 0 <= req.seed < 2**63:
        raise EdgepruneError(f"--seed {req.seed} must be between 0 and 2^63 - 1")


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


DEVICE_HINT = "expected cpu, cuda, cuda:N or mps"


def train_device(name: str) -> torch.device:
    """``--device``: cpu, cuda, cuda:N or mps, and only one this machine has."""
    m = re.fullmatch(r"(cpu|mps|cuda)(?::([0-9]{1,3}))?", str(name).strip())
    if m is None or (m[2] is not None and m[1] != "cuda"):
        raise EdgepruneError(f"--device {name} is not a training device", DEVICE_HINT)
    if m[1] == "cuda":
        if not torch.cuda.is_available():
            raise EdgepruneError(f"--device {name}: no CUDA GPU here", "use --device cpu")
        index = int(m[2] or 0)
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise EdgepruneError(f"--device {name}: this machine has {count} CUDA GPU(s)")
    if m[1] == "mps" and not torch.backends.mps.is_available():
        raise EdgepruneError(f"--device {name}: no Apple GPU (MPS) here", "use --device cpu")
    return torch.device(m[0])


def _frozen_teacher(source: Source, device: torch.device) -> torch.nn.Module:
    """The dense backbone, frozen, in eval mode on ``device``."""
    teacher = dense_backbone(source).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _optimizer(student: torch.nn.Module, req: FinetuneRequest):
    """AdamW with the predictors at ``lr`` and the backbone at ``lr ·
    backbone_lr_scale`` (frozen at 0), and DynamicViT's schedule: cosine decay of every
    group's learning rate over the run."""
    pred_params = list(student.score_predictor.parameters())
    ids = {id(p) for p in pred_params}
    back = [p for p in student.parameters() if id(p) not in ids]
    groups = [{"params": pred_params, "lr": req.lr}]
    if req.backbone_lr_scale > 0:
        groups.append({"params": back, "lr": req.lr * req.backbone_lr_scale})
    else:
        for p in back:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=req.steps)


@dataclass(kw_only=True)
class _Loop:
    """The moving parts of one run: the student in training form, the frozen teacher,
    the latency loss and the optimiser, on one device."""

    req: FinetuneRequest
    train: DynamicViTTraining
    teacher: torch.nn.Module
    crit: LatencyAwareSparsityLoss
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    device: torch.device

    @classmethod
    def start(cls, req: FinetuneRequest, student, teacher, crit, device) -> _Loop:
        """The student moved to ``device`` in training mode, and its optimiser."""
        student = student.to(device).train()
        train = DynamicViTTraining(student, req.tau)
        opt, sched = _optimizer(student, req)
        return cls(
            req=req, train=train, teacher=teacher, crit=crit, opt=opt, sched=sched, device=device
        )

    def batch(self, data: Iterator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch, half of it flipped (with ``flip``), on the device."""
        x, y = next(data)
        if self.req.flip:
            flip = torch.rand(x.shape[0]) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x.to(self.device), y

    def step(self, i: int, data: Iterator) -> Step:
        """One optimisation step on the next batch: its losses and predicted latency."""
        req, device = self.req, self.device
        x, y = self.batch(data)
        logits, feats, masks = self.train(x)
        with torch.no_grad():
            t_logits, t_feats = teacher_forward(self.teacher, x)
        cls_kl, tok_kl = distillation_losses(logits, feats, masks[-1], t_logits, t_feats)
        lat = self.crit([m.cpu() if m.device.type != "cpu" else m for m in masks]).to(device)
        ce = F.cross_entropy(logits, y.to(device)) if y is not None else None
        loss = req.distill_weight * (cls_kl + tok_kl) + lat
        if ce is not None:
            loss = loss + req.clf_weight * ce
        if not torch.isfinite(loss):
            raise EdgepruneError(f"the loss became non-finite at step {i}", "lower --lr")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            cpu_masks = [m.detach().cpu() for m in masks]
            return Step(
                step=i,
                loss=float(loss),
                distill=float(cls_kl),
                token_distill=float(tok_kl),
                ce=float(ce) if ce is not None else None,
                latency_loss=float(lat),
                predicted_ms=float(self.crit.predicted_ms(cpu_masks)),
                keep=[float(m.mean()) for m in cpu_masks],
            )


def _notes(source: Source, fresh: bool, images: ImageSet) -> list[str]:
    """The result's notes: the source's, new predictors, no labels."""
    notes = list(source.notes)
    if fresh:
        notes.append("new predictors, initialised to keep every token")
    if not images.labelled:
        notes.append("unlabelled folder: no cross-entropy term, distillation only")
    return notes


def read_keep_ratios(
    train, images: ImageSet, pre: Preprocess, batch: int, device, draws: int = 4
) -> tuple:
    """The keep ratios the trained predictors stand for, as DynamicViT relates training
    to inference (its ratio loss holds the mean *sampled* mask at ρ, inference keeps
    int(N·ρ)): the mean Gumbel-hard keep decision per stage over the folder (``draws``
    noise draws per image), cumulative, non-increasing, at least one token."""
    was = train.training
    train.eval()
    sums, n = None, 0
    g = torch.random.get_rng_state()
    torch.manual_seed(1234)
    with torch.no_grad():
        for b in batches(images, pre, batch):
            for _ in range(draws):
                _, _, masks = train(b.images.to(device))
                means = torch.stack([m.float().mean(1).sum() for m in masks]).cpu()
                sums = means if sums is None else sums + means
                n += b.images.shape[0]
    torch.random.set_rng_state(g)
    train.train(was)
    n_patches = train.model.arch.num_patches
    out, prev = [], 1.0
    for v in (sums / n).tolist():
        r = min(prev, max(1.0 / n_patches, round(v, 4)))
        out.append(r)
        prev = r
    return tuple(out)


def save_checkpoint(model: torch.nn.Module, result: FinetuneResult, path: Path) -> None:
    data = {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "edgeprune": {
            "method": result.method,
            "prune_locs": list(result.locs),
            "keep_ratios": list(result.keep_ratios),
            "target_ms": result.target_ms,
            "predicted_ms": result.final_ms,
            "steps": len(result.steps),
        },
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(data, tmp)


def finetune_to_file(
    req: FinetuneRequest,
    out: Path,
    force: bool = False,
    progress: Callable[[Step, int], None] | None = None,
) -> FinetuneResult:
    """``edgeprune finetune``: train and write the checkpoint to ``out``."""

    ins = {"SRC": req.src, "--images": req.images, "--table": req.profile, "--budget": req.budget}
    check_outputs({"--out": out}, ins, force)
    res, model = finetune(req, progress)
    save_checkpoint(model, res, out)
    return res
