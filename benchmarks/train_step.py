"""One training step of each method's training form against the dense DeiT step, and
images per second of ``edgeprune finetune`` on 1 and 2 processes (issue 31, item 6).

    python benchmarks/train_step.py [--arch deit_tiny] [--batch 32] [--rounds 8]
        [--threads N] [--name train_step]

A step is the form's forward, its loss (cross-entropy, the method's own terms, the
latency-aware loss on a synthetic table for the methods that learn their schedule),
backward and an AdamW step; the dense step is a plain DeiT's. Each method is timed
interleaved with the dense step (dense, method, dense, method …), and the ratio is the
median of the per-round ratios. The distilling methods (DynamicViT, SPViT) also run a
frozen dense teacher forward each step: reported apart ("+ teacher"), as the form's
own cost is what the issue bounds. Schedules: DynamicViT 0.7, SPViT's released rates,
A-ViT at its locations keeping all (its masks, not its count, cost), EViT 0.7, ToMe
r = 16 (the learned ones start keeping everything: masks cost the same at any ratio).

The second part runs ``edgeprune finetune`` on a synthetic ImageNet-layout folder
(1000 classes, DeiT-T) for a few steps on one process with all threads, and under
``torchrun --nproc-per-node 2`` with one thread each, and reads the images per second
each reports. Writes benchmarks/results/<name>.json and .md. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timing import host_meta, pair_ratio, summary, write_results  # noqa: E402

from edgeprune.core.arch import get_arch  # noqa: E402
from edgeprune.core.methods import MethodConfig, get_method  # noqa: E402
from edgeprune.core.models.deit import VisionTransformer  # noqa: E402
from edgeprune.core.source import resolve  # noqa: E402
from edgeprune.latency.model import LatencyModel  # noqa: E402
from edgeprune.latency.table import load  # noqa: E402
from edgeprune.training.forms import get_form, teacher_forward  # noqa: E402
from edgeprune.training.loss import LatencyAwareSparsityLoss  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.profile_helper import synthetic_table  # noqa: E402

METHODS = ("dynamicvit", "spvit", "avit", "evit", "tome")


def _config(method: str, arch) -> MethodConfig:
    meth = get_method(method)
    cfg = meth.default_config(arch)
    return get_form(method).start_config(cfg, arch.num_patches) if method != "avit" else cfg


def _step_fns(method: str, arch, batch: int):
    """(dense step, method step, method step + teacher): closures over fixed data."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, arch.img_size, arch.img_size)
    y = torch.randint(0, arch.num_classes, (batch,))
    dense = VisionTransformer(arch).init_random(0).train()
    d_opt = torch.optim.AdamW(dense.parameters(), lr=1e-4)
    meth, form_cls = get_method(method), get_form(method)
    cfg = _config(method, arch)
    model = meth.build(arch, meth.token_plan(arch, cfg))
    form_cls.init_selectors_(model, 0)
    form = form_cls(model).train()
    form.set_progress(1.0)  # EViT past its keep-rate warm-up: at its keep rate
    opt = torch.optim.AdamW(form.parameters(), lr=1e-4)
    crit = None
    if form.learns_schedule:
        table = synthetic_table(arch.name, method, split=True)
        crit = LatencyAwareSparsityLoss(table, target_ms=1.0, method=method,
                                        locs=cfg.prune_locs, extra_tokens=form.extra_tokens())  # fmt: skip
    teacher = VisionTransformer(arch).init_random(1).eval().requires_grad_(False)

    def dense_step():
        loss = F.cross_entropy(dense(x), y)
        d_opt.zero_grad(set_to_none=True)
        loss.backward()
        d_opt.step()

    def method_step(with_teacher: bool = False):
        out = form(x)
        loss = F.cross_entropy(out.logits, y) + sum(out.aux.values(), torch.zeros(()))
        if crit is not None and out.masks:
            loss = loss + crit(out.masks).float()
        if with_teacher and form.distills:
            with torch.no_grad():
                t_logits, _ = teacher_forward(teacher, x)
            loss = loss + F.kl_div(F.log_softmax(out.logits, -1), F.log_softmax(t_logits, -1),
                                   reduction="batchmean", log_target=True)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return dense_step, method_step, lambda: method_step(True)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000.0


def time_steps(method: str, arch, batch: int, rounds: int) -> dict:
    dense, step, with_teacher = _step_fns(method, arch, batch)
    fns = {"dense": dense, "form": step}
    if get_form(method).distills:
        fns["form + teacher"] = with_teacher
    for fn in fns.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            samples[k].append(_timed(fns[k]))
    out = {k: summary(v) for k, v in samples.items()}
    out["ratio"] = pair_ratio(samples["form"], samples["dense"])
    if "form + teacher" in samples:
        out["ratio_with_teacher"] = pair_ratio(samples["form + teacher"], samples["dense"])
    return out


def images_per_second(arch_name: str, batch: int, steps: int) -> dict:
    """``finetune`` for ``steps`` steps on 1 process (all threads) and 2 (one thread each)."""
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        run = [sys.executable, "-m", "edgeprune"]
        subprocess.run([*run, "demo-images", str(d / "data"), "--classes", "1000", "--per-class",
                        "1", "--val-per-class", "1", "--size", "64"], check=True,
                       capture_output=True)  # fmt: skip
        table = d / "t.json"
        synthetic_table(arch_name, "dynamicvit").save(table)
        dense = LatencyModel(load(table)).predict(resolve(arch_name).plan).total_ms
        args = ["finetune", arch_name, "--data", str(d / "data"), "--table", str(table),
                "--target-ms", f"{0.7 * dense:.3f}", "--method", "dynamicvit", "--epochs", "1",
                "--batch", str(batch), "--steps-per-epoch", str(steps), "--limit",
                str(batch * steps), "--json"]  # fmt: skip
        out = {}
        for procs, threads in ((1, cores), (2, max(1, cores // 2))):
            launcher = run if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                "--standalone", "--nproc-per-node", "2", "-m",
                                                "edgeprune"]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            res = subprocess.run([*launcher, *args, "--threads", str(threads), "--out",
                                  str(d / f"p{procs}.pth")], capture_output=True, text=True,
                                 env=env, check=True)  # fmt: skip
            ep = json.loads(res.stdout)["epochs"][0]
            out[f"{procs} process(es) × {threads} thread(s)"] = ep["images_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="deit_tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=6, help="finetune steps for images/s")
    ap.add_argument("--name", default="train_step")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    arch = get_arch(a.arch)
    ips = images_per_second(a.arch, 16, a.steps)  # first: a minute, and fails fast
    results = {m: time_steps(m, arch, a.batch, a.rounds) for m in METHODS}
    meta = {**host_meta(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "batch": a.batch, "arch": a.arch, "rounds": a.rounds}  # fmt: skip
    bound = {"dynamicvit": 1.10, "spvit": 1.10, "avit": 1.10, "evit": 1.0, "tome": 1.0}
    lines = [f"# Training step against dense ({a.arch}, batch {a.batch}, {meta['threads']} "
             f"threads, torch {torch.__version__}, {meta['cpu']}, {meta['date']})", "",
             "| method | dense step ms | form step ms | ratio (median, p10–p90) | bound | "
             "+ teacher ratio |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for m, r in results.items():
        rt = r.get("ratio_with_teacher")
        with_teacher = f"{rt['median']:.3f}" if rt else "—"
        lines.append(
            f"| {m} | {r['dense']['median']:.0f} | {r['form']['median']:.0f} | "
            f"{r['ratio']['median']:.3f} ({r['ratio']['p10']:.3f}–{r['ratio']['p90']:.3f}) | "
            f"{'≤' if bound[m] > 1 else '<'} {bound[m]:.2f} | "
            f"{with_teacher} |"
        )
    lines += ["", "| edgeprune finetune (DynamicViT, batch 16) | images/s |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in ips.items()]
    write_results(Path(__file__).parent / "results", a.name,
                  {"meta": meta, "steps": results, "images_per_s": ips, "bounds": bound}, lines)  # fmt: skip


if __name__ == "__main__":
    main()
