"""How the CLI shows results: rich tables and summary lines built from library results
(the CLI prints them; nothing here computes or decides). The results come from the jobs,
which this module does not import: each function names the result it reads."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich import box
from rich import progress as rp
from rich.markup import escape
from rich.table import Table


def devices_table(rows: list[dict]) -> Table:
    """The device profiles, one row each, narrow enough for 80 columns (why one cannot be
    reached: ``devices_notes``)."""
    t = Table(title="devices", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("device", "runtime", "threads", "reach", "ok"):
        t.add_column(col, no_wrap=True, min_width=len(col) if col != "ok" else 3)
    for r in rows:
        name = r["name"] + "".join(f"\n ({a})" for a in r["aliases"])
        t.add_row(
            name,
            f"{r['runtime']} {r['precision']}",
            str(r["threads"] or "all"),
            _reach(r),
            "[green]yes[/]" if r["reachable"] else "[red]no[/]",
        )
    return t


def _reach(row: dict) -> str:
    """How a device is reached: local, ssh HOST, adb [SERIAL]."""
    if row["transport"] == "local":
        return "local"
    where = row.get("host") or row.get("serial")
    return f"{row['transport']} {where}" if where else row["transport"]


def devices_notes(rows: list[dict], width: int = 160) -> list[str]:
    """One line per device that cannot be reached: its name and why (cut to ``width``)."""
    notes = []
    for r in rows:
        if not r["reachable"]:
            why = " ".join(str(r["why"]).split())
            why = why if len(why) <= width else why[: width - 1] + "…"
            notes.append(f"{r['name']}: {escape(why)}")
    return notes


def profile_lines(res) -> list[str]:
    """``res``: a ``profiling.measure.ProfileOutcome``."""
    table, d, s = res.table, res.table.device, res.summary
    lines = [
        f"[green]wrote[/] {res.path}{f' and {res.plot}' if res.plot else ''}  "
        f"({res.seconds:.0f} s; {d['runtime']} {d.get('runtime_version', '')}, "
        f"{d.get('precision', '')}, {d['threads']} threads, batch {table.batch}, "
        f"host {d.get('host', 'local')})",
        f"block @ {s['tokens']} tokens: {s['block_ms']:.3f} ms median; embed "
        f"{s['embed_ms']:.3f} ms; head {s['head_ms']:.3f} ms",
    ]
    if "noise" in s:
        n = s["noise"]
        lines.append(
            f"noise: passes of a point spread {n['median_spread']:.1%} (median), "
            f"{n['p90_spread']:.1%} (p90) over {n['points']} points; "
            f"{s.get('retimed', 0)} re-timed for breaking the monotone shape by more than "
            f"{n['shape_tolerance']:.1%}, {s.get('still_breaking', 0)} still breaking it "
            "(the stored curves are monotone fits)"
        )
    if "interp_max_rel_err" in s:
        lines.append(
            f"interpolation check: max error {s['interp_max_rel_err']:.1%} over "
            f"{s['interp_points']} off-grid points"
        )
    if "e2e" in s:
        e = s["e2e"]
        lines.append(
            f"end-to-end: {e['anchors']} whole models; predicted = {e['offset_ms']:+.3f} ms + "
            f"{e['scale']:.3f} × pieces (anchors within {e['worst_rel_err']:.1%})"
        )
    return lines


def budget_lines(run, verbose: bool = False) -> list[str]:
    """``run``: a ``budget.run.BudgetRun``. The expected latency first (measured with
    --verify), then the schedule; ``verbose`` adds the figures it is made of."""
    res, c = run.result, run.result.chosen
    if res.status == "dense":
        what = (
            f"the dense model already meets the target of {res.target_ms:.3f} ms: no pruning "
            f"needed (the fastest {res.method} schedule, "
            f"{res.fastest.describe()}, would take "
            f"{res.fastest.predicted_ms * res.scale:.3f} ms)"
        )
    else:
        where = "" if c.r_schedule is not None else f" at blocks {list(res.locs)}"
        what = (
            f"{c.describe()}{where} ({res.method}, {res.schedule}) for a target of "
            f"{res.target_ms:.3f} ms"
        )
    extra = f", predicted {run.metric} {c.accuracy:.2f}" if c.accuracy is not None else ""
    lines = [
        expected_line(run.expected.to_dict()),
        what,
        f"tokens/block: {' '.join(map(str, c.plan.attn_tokens))}",
        f"GFLOPs {res.gflops():.3f}, kept tokens {c.kept_tokens:g}{extra}",
    ]
    if res.margin or res.margin_source.startswith("given"):
        lines.append(
            f"aimed {res.margin:.1%} under the target, at {res.aim_ms:.3f} ms ({res.margin_source})"
        )
    if run.chosen_summary is not None:
        lines.append(run.chosen_summary)
    if verbose:
        lines += prediction_lines(res)
    if run.verification is not None:
        lines += verification_lines(run.verification, verbose)
    lines.append(f"[green]wrote[/] {run.path}" + (f" and {run.plot}" if run.plot else ""))
    return lines


def prediction_lines(res) -> list[str]:
    """What the table predicts for the pick and for dense, and its re-anchoring."""
    k = res.scale
    anchored = f" × {k:.3f} (re-anchored) = {res.predicted_ms:.3f} ms" if k != 1.0 else ""
    return [
        f"the table predicts {res.chosen.predicted_ms:.3f} ms{anchored} (dense "
        f"{res.dense_ms:.3f} ms{f' × {k:.3f}' if k != 1.0 else ''}); margin to the target "
        f"{res.margin_ms:.3f} ms"
    ]


def _choice_text(ch: dict | None) -> str:
    if ch is None:
        return "nothing (the target is unreachable on it)"
    if ch["status"] == "dense":
        what = "dense"
    elif ch.get("r_schedule") is not None:
        what = f"r {ch['r_schedule']}"
    else:
        what = str([round(r, 4) for r in ch["keep_ratios"]])
    return f"{what} ({ch['table_predicted_ms']:.3f} ms in the table)"


def reanchor_lines(v) -> list[str]:
    a = v.reanchor
    if a is None:
        return ["not re-anchored (--no-reanchor): the table's own choice and predictions"]
    return [
        f"re-anchored: dense measured {a.dense_measured_ms:.3f} ms here now ({a.rounds} "
        f"bursts) vs {a.dense_table_ms:.3f} ms in the table: predictions × {a.scale:.3f}",
        f"the table alone picks {_choice_text(a.table_choice)}; re-anchored it picks "
        f"{_choice_text(a.choice)} × {a.scale:.3f} = {a.choice['predicted_ms']:.3f} ms",
    ]


def refined_lines(v) -> list[str]:
    r = v.refined
    if not r:
        return []
    f = r["first"]
    at = f.get("at_anchor_ms", f["measured_ms"])
    tries = r.get("tries", [])
    more = ", ".join(f"{t['measured_ms']:.3f}" for t in tries)
    landed = "within" if r.get("on_aim") else "none within"
    return [
        f"refined: that pick measured {f['measured_ms']:.3f} ms ({at:.3f} ms at the anchor's "
        f"speed); chosen again on the picks' own measurements ({len(tries)} more measured: "
        f"{more} ms), {landed} {r.get('tolerance', 0.05):.0%} under the target; verified: "
        f"the one keeping the most under it, the table × {r['scale']:.3f}"
    ]


def verification_lines(v, verbose: bool = False) -> list[str]:
    """The verdict of ``budget --verify``; ``verbose`` adds the re-anchoring, the
    refinement, the predictions beside the measurement and dense's timing."""
    verdict = "[green]budget met[/]" if v.met else "[red]budget NOT met[/]"
    lines = [
        f"{verdict} when measured: {v.measured_ms:.3f} ms vs target {v.target_ms:.3f} ms "
        f"({v.vs_target:+.1%})"
    ]
    if verbose:
        table = f", the table's {v.table_predicted_ms:.3f} ms" if v.reanchor else ""
        lines = (
            reanchor_lines(v)
            + refined_lines(v)
            + lines
            + [
                f"measured {v.measured_ms:.3f} ms (p90 {v.measured_p90_ms:.3f}) against "
                f"predicted {v.predicted_ms:.3f} ms (error {v.error:+.1%}{table})",
                f"dense measured {v.dense_measured_ms:.3f} ms vs predicted "
                f"{v.dense_predicted_ms:.3f} ms (machine drift {v.drift:+.1%}); speedup "
                f"{v.speedup:.2f}× ({v.runtime}, {v.threads} thread(s), {v.rounds} "
                f"interleaved rounds × {v.burst})",
            ]
        )
    return lines + moved_lines(v)


def moved_lines(v) -> list[str]:
    """When the machine changed speed between re-anchor and measurement: by how much,
    and the pick at the anchor's speed (its ratio to dense, timed beside it, holds)."""
    if v.steady:
        return []
    return [
        f"[yellow]the machine changed speed during the check[/]: dense {v.dense_measured_ms:.3f} "
        f"ms now vs {v.reanchor.dense_measured_ms:.3f} ms at the re-anchor ({v.moved:+.1%}); "
        f"at the re-anchor's speed the pick takes {v.at_anchor_ms:.3f} ms "
        f"({v.at_anchor_vs_target:+.1%} vs target). The verdict is the measurement; on a "
        "quieter machine (or 1 thread) it would be steadier"
    ]


def validation_table(profile, rep) -> Table:
    """``rep``: a ``profiling.validate.ValidationReport``."""
    t = Table(title=f"{profile}: {rep.method}, {rep.threads} thread(s)", title_justify="left")
    tome = any(r.r_schedule is not None for r in rep.results)
    for col in ("r per block" if tome else "keep ratios", "predicted ms", "measured ms", "error"):
        t.add_column(col, justify="right")
    for r in rep.results:
        sched = r.r_schedule if r.r_schedule is not None else r.keep_ratios
        t.add_row(
            ", ".join(f"{x:g}" for x in sched),
            f"{r.predicted_ms:.3f}",
            f"{r.measured_ms:.3f}",
            f"{r.rel_error:.1%}",
        )
    return t


def validation_lines(rep) -> list[str]:
    """``rep``: a ``profiling.validate.ValidationReport``."""
    lines = [
        f"|pred − meas| / meas: median {rep.median_error:.1%} (target ≤ 5 %), "
        f"p90 {rep.p90_error:.1%} (target ≤ 10 %) over {len(rep.results)} models"
    ]
    if rep.drift is not None:
        lines.append(
            f"machine drift since profiling: {rep.drift:+.1%} (the profile's "
            f"{len(rep.anchors)} whole-model anchors re-timed now; included in the error)"
        )
    if (dc := rep.drift_corrected) is not None:
        lines.append(
            f"with the predictions scaled by that drift: median {dc[0]:.1%}, p90 {dc[1]:.1%} "
            "(a small figure here and a large one above: the machine moved, not the table)"
        )
    if rep.noise is not None:
        lines.append(
            f"noise: a model's runs spread {rep.noise:.1%} ((p90 − p10) / median, median over "
            "the models); errors much below it are luck, not accuracy"
        )
    return lines + verdict_lines(rep.recorded)


def verdict_lines(v: dict | None) -> list[str]:
    """``validate``'s verdict, as written into the table file (``ValidationReport.recorded``)."""
    if v is None:
        return []
    where = f"recorded in {v['table']}" if v.get("table") else f"NOT recorded: {v.get('error')}"
    if v["trusted"]:
        return [f"trusted: median error {v['median_error']:.1%} ≤ {v['limit']:.0%} ({where})"]
    return [
        f"[red]UNTRUSTED[/]: median error {v['median_error']:.1%} > {v['limit']:.0%} ({where}); "
        "predict, budget, finetune and table-info will say so until a validation passes"
    ]


def inspect_table(src: str, source, n_params: int) -> Table:
    a, fl, cfg, plan = source.arch, source.flops(), source.config, source.plan
    t = Table(title=f"{src}", show_header=False, title_justify="left")
    t.add_row("method", source.method.name)
    t.add_row(
        "arch",
        f"{a.name} (embed {a.embed_dim}, heads {a.num_heads}, depth {a.depth}, "
        f"patch {a.patch_size}, {a.img_size}²)",
    )
    t.add_row("weights", "random (built-in spec)" if source.is_builtin else "checkpoint")
    t.add_row("prune locs", ", ".join(map(str, cfg.prune_locs)) or "—")
    t.add_row("keep ratios", ", ".join(f"{r:g}" for r in cfg.keep_ratios) or "—")
    if cfg.options:
        t.add_row("options", ", ".join(f"{k}={v}" for k, v in cfg.options.items()))
    t.add_row("tokens/block", " ".join(map(str, plan.tokens_per_block)))
    if plan.mlp_tokens != plan.attn_tokens:
        t.add_row("tokens/MLP", " ".join(map(str, plan.mlp_tokens)))
    t.add_row("params", f"{n_params / 1e6:.2f} M")
    t.add_row("GFLOPs dense", f"{fl.dense:.2f}")
    t.add_row("GFLOPs pruned", f"{fl.pruned:.2f}  (backbone at the token plan)")
    t.add_row("GFLOPs selectors", f"{fl.selectors:.3f}  (scoring; top-k and gather are free)")
    t.add_row("GFLOPs total", f"{fl.total:.2f}  ({fl.total / fl.dense:.0%} of dense)")
    return t


def expected_line(e: dict) -> str:
    """The one latency quoted for a schedule (``latency.model.Expected.to_dict()``), with
    its parts in brackets where it is not the table's own prediction."""
    pm = e["plus_minus_ms"]
    pm = "± unknown" if pm is None else f"±{pm:.2f}"
    line = f"[bold]expected latency on {e['device']}: {e['ms']:.2f} ms[/] ({pm}, {e['basis']})"
    parts = e["parts"]
    if e["basis"] == "latency table, rescaled":
        line += f": the table's {parts['table_ms']:.2f} ms × {parts['rescale']:.3f}"
    return line


def predict_table(source, pred, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("part")
    t.add_column("tokens", justify="right")
    t.add_column("ms", justify="right")
    t.add_row("embed", "", f"{pred.embed_ms:.3f}")
    sel_at = {
        s.block: (s, ms) for s, ms in zip(source.plan.selectors, pred.selectors_ms, strict=True)
    }
    for b, ms in enumerate(pred.blocks_ms):
        if b in sel_at:
            s, sms = sel_at[b]
            t.add_row(f"selector ({s.where} {b})", f"{s.tokens_in}→{s.tokens_out}", f"{sms:.3f}")
        a, m = pred.attn_tokens[b], pred.mlp_tokens[b]
        t.add_row(f"block {b}", str(a) if a == m else f"{a}/{m}", f"{ms:.3f}")
    t.add_row("head", "", f"{pred.head_ms:.3f}")
    if pred.overhead_ms or pred.scale != 1.0:
        t.add_row(f"end-to-end offset (parts × {pred.scale:.3f})", "", f"{pred.overhead_ms:.3f}")
    t.add_row("[bold]total[/]", "", f"[bold]{pred.total_ms:.3f}[/]")
    return t


def calibration_lines(path, data: dict) -> list[str]:
    r = data["report"]
    return [
        f"[green]wrote[/] {path}",
        f"tokens/block: {' '.join(map(str, data['counts']))}",
        f"zipped vs masked: top-1 agreement {r['top1_agreement']:.0%}, "
        f"max |logit diff| {r['max_logit_diff']:.3g} over {r['inputs']} inputs",
    ]


def bench_line(artifact, dev, t) -> str:
    """``bench``: the median with its 95 % interval, and whether that got within the
    tolerance (``runtimes.timing.Timing``)."""
    if t.ci_low_ms is not None and t.ci_halfwidth is not None:
        ci = f" (95 % CI {t.ci_low_ms:.3f}–{t.ci_high_ms:.3f}, ±{t.ci_halfwidth * 100:.1f} %)"
    else:
        ci = " (too few runs for a 95 % interval)"
    line = (
        f"{artifact} on {dev.name} ({t.runtime} {t.runtime_version}, {t.threads} threads): "
        f"median {t.median_ms:.3f} ms{ci}, p90 {t.p90_ms:.3f} ms, min {t.min_ms:.3f}, "
        f"max {t.max_ms:.3f} over {t.runs} runs"
    )
    if t.converged is False and t.ci_halfwidth is not None:
        line += f"; not converged: wider than the ±{t.tolerance * 100:g} % tolerance"
    return line


def bench_notes(conditions: dict) -> list[str]:
    """``bench``'s lines on stderr about the conditions (``runtimes.conditions``): the
    wait for a quiet machine, the busy-machine warning, a device's temperature."""
    notes = []
    wait = conditions.get("wait")
    if wait and wait.get("quiet"):
        notes.append(f"note: waited {wait['waited_s']:.0f} s for a quiet machine")
    if conditions.get("warning"):
        notes.append(f"warning: {conditions['warning']}")
    elif wait and wait.get("quiet") is False:
        notes.append(f"note: not quiet after waiting {wait['waited_s']:.0f} s; measured anyway")
    hot = conditions.get("hottest_c") or [None, None]
    if None not in hot:
        notes.append(f"note: hottest thermal zone {hot[0]:.1f} °C before, {hot[1]:.1f} °C after")
    return notes


def table_lines(path, t) -> list[str]:
    """``profile-info``: one line about the latency table, then the block curve at its
    ends and at 68 tokens."""
    d = t.device
    lines = [
        f"{path}: {t.arch.name}{' + ' + t.method if t.method else ''} on {d['name']} "
        f"({d['runtime']} {d.get('runtime_version', '')}, {d.get('precision', '')}, "
        f"{d['threads']} threads, batch {t.batch}, {'measured' if t.measured else 'ESTIMATED'}, "
        f"{t.date})"
    ]
    for n in (t.block.tokens[0], 68, t.block.tokens[-1]):
        lines.append(f"  block @ {n:>3} tokens: {t.block.at(n):.3f} ms")
    v = t.validation
    if v is not None and isinstance(v.get("median_error"), int | float):
        lines.append(
            f"  {'trusted' if t.trusted else 'UNTRUSTED'}: median error {v['median_error']:.1%} "
            f"on {v.get('configs', '?')} whole models (validated {str(v.get('date'))[:10]})"
        )
    return lines


def findings_table(model, target: str, findings) -> Table:
    """``edgeprune check``: what in the graph the target rejects (error) or runs slowly,
    and the ops run outside the delegate or provider (fallback)."""
    t = Table(title=f"{model} on {target}: {len(findings)} finding(s)", title_justify="left")
    for col in ("severity", "rule", "where", "detail"):
        t.add_column(col)
    for f in findings:
        severity = {"error": "[red]error[/]", "slow": "[yellow]slow[/]"}.get(
            f.severity, f"[cyan]{f.severity}[/]"
        )
        t.add_row(severity, f.rule, f.where, f.detail)
    return t


def print_export(result, out, err) -> None:
    """What ``export`` did: kept files, next steps, the artifact, parity, warnings."""

    for what in result.kept:
        out.print(f"[green]kept[/] {escape(what)}")
    for line in result.next_steps:
        out.print(line, markup=False, soft_wrap=True)
    if not result.written:
        return
    man, p = result.manifest, result.parity
    out.print(f"[green]wrote[/] {result.artifact}  (sha256 {man['sha256'][:12]}…)")
    if p.get("status") == "skipped":
        out.print(f"[yellow]parity not checked:[/] {p['reason']} (recorded in the manifest)")
    else:
        kl = p.get("max_kl_divergence")  # judged (int8): the KL and its limit
        out.print(
            f"parity vs PyTorch ({p['runtime']}): max |diff| {p['max_abs_diff']:.2e}, top-1 "
            f"agreement {p['top1_agreement']:.0%}"
            + (f", KL(fp32 ‖ it) {p['kl_divergence']:.3g}" if kl is not None else "")
            + f" over {p['inputs']} inputs (limits {p['atol']:g}, "
            f"{p['min_top1_agreement']:.0%}" + (f", KL {kl:g})" if kl is not None else ")")
        )
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}")
    out.print(f"tokens/block: {' '.join(map(str, man['token_plan']['tokens_per_block']))}")


def fmt_pct(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.2f} %"


@contextmanager
def progress(console, label: str, bar: bool = False) -> Iterator[Callable[..., None]]:
    """A transient progress display on stderr (a terminal only); yields
    ``update(description, done=None, total=None)``."""
    cols = (
        [rp.TextColumn("{task.description:<18}"), rp.BarColumn(), rp.MofNCompleteColumn()]
        if bar
        else [rp.SpinnerColumn(), rp.TextColumn("{task.description}")]
    )
    with rp.Progress(
        *cols,
        rp.TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as prog:
        task = prog.add_task(label, total=None)

        def update(desc: str, done: int | None = None, total: int | None = None) -> None:
            prog.update(task, description=desc, completed=done, total=total)

        yield update


# ---- accuracy: evaluate, sensitivity, finetune (issue 15) ----------------------------
def print_evaluation(d: dict, out, err) -> None:
    """``evaluate``'s report: notes, what was read, and one row per comparison."""
    for n in d["notes"]:
        err.print(f"[yellow]note:[/] {n}")
    acc = d["accuracy"]
    label = "labelled" if d["labelled"] else "unlabelled"
    out.print(
        f"{d['model']} on {d['images_read']} images ({label}, {d['folder']}; "
        f"{d['skipped_unreadable']} unreadable skipped)"
    )
    t = Table(title_justify="left")
    for col in ("compared with", "top-1", "top-5", "top-1 agreement", "KL (nats)", "max |Δlogit|"):
        t.add_column(col, justify="right")
    t.add_row(
        "labels" if acc else "—", fmt_pct(acc and acc["top1"]), fmt_pct(acc and acc["top5"]),
        "", "", "",
    )  # fmt: skip
    for name, r in d["references"].items():
        a = r["accuracy"] or {}
        out.print(f"{name}: {r['what']}")
        t.add_row(
            name,
            fmt_pct(a.get("top1")),
            fmt_pct(a.get("top5")),
            fmt_pct(r["top1_agreement"]),
            f"{r['kl']:.3g}",
            f"{r['max_logit_diff']:.3g}",
        )
    out.print(t)


def sensitivity_lines(path, data: dict) -> list[str]:
    lines = [f"{data['metric_description']}; dense {data['dense']:.2f}"]
    for loc, st in data["stages"].items():
        pts = ", ".join(
            f"{r:g}: {a:.1f}" for r, a in zip(st["keep_ratios"], st["accuracy"], strict=True)
        )
        lines.append(f"stage {loc}: {pts}")
    lines.append(f"[green]wrote[/] {path}")
    return lines


def finetune_lines(res, path) -> list[str]:
    """``finetune``'s report: one line per epoch, then where the predicted latency went
    against the aim, and how to export."""
    lines = [
        f"{res.method} {res.arch} on {res.processes} process(es), {res.device}"
        + (f", resumed after epoch {res.resumed_from}" if res.resumed_from else "")
    ]
    for e in res.epochs:
        keep = ", ".join(f"{r:.3f}" for r in e.schedule["keep_ratios"])
        lines.append(
            f"epoch {e.epoch:>3}  loss {e.loss:.4f}  top-1 {e.top1:5.1f} %  "
            f"predicted {e.predicted_ms:.3f} ms  keep [{keep}]  "
            f"{e.images_per_s:.1f} img/s"
        )
    off = 100.0 * (res.final_ms - res.aim_ms) / res.aim_ms
    lines += [
        f"predicted {res.start_ms:.3f} ms at the start (dense {res.dense_ms:.3f}) → "
        f"{res.final_ms:.3f} ms, aim {res.aim_ms:.3f} ms ({off:+.1f} %; target "
        f"{res.target_ms:.3f} ms, in the table's terms)",
        f"[green]wrote[/] {path} (and its .jsonl log and .png); export it with: "
        f"edgeprune export {path} --target onnx",
    ]
    return lines


def print_finetune(res, path, out, err) -> None:
    """``finetune``'s report: notes and warnings on stderr, then one line an epoch."""
    for n in res.notes:
        err.print(f"[yellow]note:[/] {n}")
    for w in res.warnings:
        err.print(f"warning: {w}", markup=False, style="yellow")
    for line in finetune_lines(res, path):
        out.print(line, soft_wrap=True)


@contextmanager
def training_progress(console) -> Iterator[Callable[..., None] | None]:
    """A progress bar over each epoch's steps on ``console`` (None: no display);
    yields ``update(epoch, step, steps, line)`` or None."""
    if console is None:
        yield None
        return
    with rp.Progress(
        rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
        rp.TimeElapsedColumn(), console=console, transient=True,
        disable=not console.is_terminal,
    ) as prog:  # fmt: skip
        task = prog.add_task("training", total=None)

        def update(epoch: int, step: int, steps: int, line: dict) -> None:
            ms = f"  {line['predicted_ms']:.2f} ms" if "predicted_ms" in line else ""
            desc = f"epoch {epoch + 1}  loss {line['loss']:.3f}{ms}"
            prog.update(task, description=desc, completed=step + 1, total=steps)

        yield update
