"""REPORT.md's section on training to a budget: each method's predicted latency at the
start and end of a short fine-tuning run against the budget's aim
(finetune_methods.py), and a training step's cost against dense (train_step.py)."""

from __future__ import annotations

from report_data import Run, Section, table


def training(runs: dict[str, list[Run]]) -> Section:
    sec = Section("9. Training to a budget")
    _methods(sec, runs)
    _steps(sec, runs)
    return sec


def _methods(sec: Section, runs: dict[str, list[Run]]) -> None:
    if not runs["finetune_methods"]:
        sec.add("No result file covers fine-tuning each method (finetune_methods.py) yet.", "")
        return
    run = max(runs["finetune_methods"], key=lambda r: (r.date, r.name))
    sec.add(
        f"finetune_methods.py: each method fine-tuned for {run.meta.get('epochs')} epochs on "
        "the tests' tiny model (16 patches, depth 4) toward a budget at 3 ms (5 % margin; "
        "for EViT and ToMe the nearest target below whose pick is within 5 % of its aim) on "
        "a synthetic table; *end* is the predicted latency of the static model at the "
        "schedule read off the trained form (learned: DynamicViT, SPViT, A-ViT) or the "
        "budget's own (EViT's keep rate, ToMe's r).",
        "",
        *table(
            ["method", "schedule", "start ms", "end ms", "aim ms", "end vs aim", "run"],
            (
                [
                    m,
                    "learned" if r["learned"] else "the budget's",
                    f"{r['start_ms']:.3f}",
                    f"{r['end_ms']:.3f}",
                    f"{r['aim_ms']:.3f}",
                    f"{100 * r['off_aim']:+.1f} %",
                    sec.cite(run),
                ]  # fmt: skip
                for m, r in run.data["methods"].items()
            ),
        ),
        "",
    )


def _steps(sec: Section, runs: dict[str, list[Run]]) -> None:
    if not runs["train_step"]:
        sec.add("No result file covers a training step's cost (train_step.py) yet.", "")
        return
    run = max(runs["train_step"], key=lambda r: (r.date, r.name))
    m = run.meta
    sec.add(
        f"train_step.py: one step (forward, loss, backward, AdamW) of each method's training "
        f"form against the dense step, {m.get('arch')}, batch {m.get('batch')}, "
        f"{m.get('threads')} threads, interleaved {m.get('rounds')} rounds, median of the "
        "per-round ratios (p10–p90); *+ teacher*: with the dense teacher's forward the "
        "distilling methods also run.",
        "",
        *table(
            ["method", "dense ms", "form ms", "ratio", "bound", "+ teacher", "run"],
            (
                [
                    k,
                    f"{r['dense']['median']:.0f}",
                    f"{r['form']['median']:.0f}",
                    f"{r['ratio']['median']:.3f} ({r['ratio']['p10']:.3f}–{r['ratio']['p90']:.3f})",
                    f"{run.data['bounds'][k]:.2f}",
                    f"{r['ratio_with_teacher']['median']:.3f}"
                    if "ratio_with_teacher" in r
                    else "—",
                    sec.cite(run),
                ]  # fmt: skip
                for k, r in run.data["steps"].items()
            ),
        ),
        "",
        *table(
            ["edgeprune finetune", "images/s", "run"],
            ([k, f"{v:.1f}", sec.cite(run)] for k, v in run.data["images_per_s"].items()),
        ),
        "",
    )
