"""The ``edgeprune`` command line. Thin: every command parses, calls the library, prints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgeprune.errors import EdgepruneError

app = typer.Typer(
    name="edgeprune",
    help="Deploy token-pruned Vision Transformers: static top-k graphs, export, profile, budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}

# ---- options shared by every command that takes a SRC -------------------------------
SrcArg = Annotated[
    str,
    typer.Argument(
        help="Checkpoint file (.pth/.pt) or built-in spec ARCH[:METHOD[@RATIO]], "
        "e.g. deit_small:dynamicvit@0.7 (random weights).",
        show_default=False,
    ),
]
MethodOpt = Annotated[
    str | None,
    typer.Option("--method", help="Force the method (default: from the checkpoint keys)."),
]
KeepOpt = Annotated[
    str | None, typer.Option("--keep", help="Per-stage keep ratios, e.g. 0.7,0.49,0.343.")
]
LocsOpt = Annotated[
    str | None, typer.Option("--locs", help="Pruning locations (block indices), e.g. 3,6,9.")
]
BudgetOpt = Annotated[
    Path | None,
    typer.Option("--budget", help="A budget file from 'edgeprune budget': sets method/keep/locs."),
]
HeadsOpt = Annotated[
    int | None,
    typer.Option(
        "--heads", help="Attention heads, when the checkpoint's embed dim is not a DeiT's."
    ),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = _state["debug"] or debug


def _note(source) -> None:
    for n in source.notes:
        err.print(f"[yellow]note:[/] {n}")


def _resolve(src, method, keep, locs, heads, budget=None):
    from edgeprune.source import resolve

    if budget is not None:  # --budget FILE sets method, keep and locs (see "latency" below)
        return _resolve_with_budget(src, method, keep, locs, heads, budget)
    return resolve(src, method=method, keep=keep, locs=locs, heads=heads)


@app.command()
def inspect(
    src: SrcArg,
    method: MethodOpt = None,
    keep: KeepOpt = None,
    locs: LocsOpt = None,
    heads: HeadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    budget: BudgetOpt = None,
) -> None:
    """Show what a model is: method, arch, keep schedule, tokens per block, params, GFLOPs."""
    source = _resolve(src, method, keep, locs, heads, budget)
    fl = source.flops()
    n_params = sum(p.numel() for p in source.model().parameters())
    info = {
        **source.describe(),
        "arch": source.arch.name,
        "arch_config": source.arch.to_dict(),
        "tokens_per_block": list(source.plan.tokens_per_block),
        "mlp_tokens_per_block": list(source.plan.mlp_tokens),
        "token_plan": source.plan.to_dict(),
        "params": n_params,
        "gflops": fl.to_dict(),
        "gflops_convention": "multiply-adds (DeiT/DynamicViT papers); selectors counted apart",
    }
    if as_json:
        print(json.dumps(info))
        return
    _note(source)
    a = source.arch
    t = Table(title=f"{src}", show_header=False, title_justify="left")
    t.add_row("method", source.method.name)
    t.add_row(
        "arch",
        f"{a.name} (embed {a.embed_dim}, heads {a.num_heads}, depth {a.depth}, "
        f"patch {a.patch_size}, {a.img_size}²)",
    )
    t.add_row("weights", "random (built-in spec)" if source.is_builtin else "checkpoint")
    t.add_row("prune locs", ", ".join(map(str, source.config.prune_locs)) or "—")
    t.add_row("keep ratios", ", ".join(f"{r:g}" for r in source.config.keep_ratios) or "—")
    if source.config.options:
        t.add_row("options", ", ".join(f"{k}={v}" for k, v in source.config.options.items()))
    t.add_row("tokens/block", " ".join(map(str, source.plan.tokens_per_block)))
    if source.plan.mlp_tokens != source.plan.attn_tokens:
        t.add_row("tokens/MLP", " ".join(map(str, source.plan.mlp_tokens)))
    t.add_row("params", f"{n_params / 1e6:.2f} M")
    t.add_row("GFLOPs dense", f"{fl.dense:.2f}")
    t.add_row("GFLOPs pruned", f"{fl.pruned:.2f}  (backbone at the token plan)")
    t.add_row("GFLOPs selectors", f"{fl.selectors:.3f}  (scoring; top-k and gather are free)")
    t.add_row("GFLOPs total", f"{fl.total:.2f}  ({fl.total / fl.dense:.0%} of dense)")
    out.print(t)


@app.command()
def export(
    src: SrcArg,
    target: Annotated[
        str, typer.Option("--target", "-t", help="onnx (more targets: see README).")
    ] = "onnx",
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: <name>.onnx here).")
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", "-b", help="Static batch size of the graph.")
    ] = 1,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (≥ 17).")] = 17,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Overwrite an existing output.")
    ] = False,
    parity_inputs: Annotated[
        int, typer.Option("--parity-inputs", help="Random inputs for the parity check.")
    ] = 16,
    method: MethodOpt = None,
    keep: KeepOpt = None,
    locs: LocsOpt = None,
    heads: HeadsOpt = None,
    budget: BudgetOpt = None,
) -> None:
    """Export the static graph and check it against PyTorch; writes a manifest beside it."""
    from edgeprune.export.onnx import export_onnx

    if target != "onnx":
        raise EdgepruneError(f"unknown target '{target}'", "expected: onnx")
    if parity_inputs < 1:
        raise EdgepruneError(f"--parity-inputs {parity_inputs} must be at least 1")
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    source = _resolve(src, method, keep, locs, heads, budget)
    _note(source)
    dest = out_path or Path(_default_name(src, source) + ".onnx")
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as prog:
        task = prog.add_task("exporting", total=None)
        man = export_onnx(
            source,
            dest,
            batch=batch,
            opset=opset,
            force=force,
            n_parity_inputs=parity_inputs,
            progress=lambda msg: prog.update(task, description=msg),
        )
    p = man["parity"]
    out.print(f"[green]wrote[/] {dest}  (sha256 {man['sha256'][:12]}…)")
    out.print(
        f"parity vs PyTorch: max |diff| {p['max_abs_diff']:.2e}, top-1 agreement "
        f"{p['top1_agreement']:.0%} over {p['inputs']} inputs "
        f"(onnxruntime {man['versions']['onnxruntime']})"
    )
    out.print(f"tokens/block: {' '.join(map(str, man['token_plan']['tokens_per_block']))}")


def _default_name(src: str, source) -> str:
    if source.is_builtin:
        return src.replace(":", "_").replace("@", "_")
    return Path(src).stem


# =====================================================================================
# ---- latency: predict, budget, validate-profile (issue 5) ---------------------------
# =====================================================================================
ProfileOpt = Annotated[
    Path,
    typer.Option(
        "--profile", "-p", help="A latency table (from 'edgeprune profile').", show_default=False
    ),
]


def _resolve_with_budget(src, method, keep, locs, heads, budget_path: Path):
    from edgeprune.budget import load_budget
    from edgeprune.source import resolve

    b = load_budget(budget_path)
    if keep is not None or locs is not None:
        raise EdgepruneError("--budget sets the keep ratios and locations", "drop --keep/--locs")
    if method is not None and method != b.method:
        raise EdgepruneError(f"--method {method} contradicts the budget's method {b.method}")
    pruned = bool(b.locs)
    source = resolve(
        src,
        method=b.method,
        keep=b.keep_ratios if pruned else None,
        locs=b.locs if pruned else None,
        heads=heads,
    )
    if source.arch.name != b.arch:
        raise EdgepruneError(
            f"budget {budget_path} is for {b.arch}, but {src} is {source.arch.name}",
            f"use a {b.arch} model or a budget made for {source.arch.name}",
        )
    return source


@app.command()
def predict(
    src: SrcArg,
    profile: ProfileOpt,
    method: MethodOpt = None,
    keep: KeepOpt = None,
    locs: LocsOpt = None,
    heads: HeadsOpt = None,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Batch size to predict for.")] = 1,
    budget: BudgetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Predicted latency of a model on a profiled device, with the per-block breakdown."""
    from edgeprune.latency import load_model

    model = load_model(profile)
    source = _resolve(src, method, keep, locs, heads, budget)
    model.check_batch(batch)
    pred = model.predict(source.plan)
    info = {
        "source": src,
        "method": source.method.name,
        "arch": source.arch.name,
        "keep_ratios": list(source.config.keep_ratios),
        "prune_locs": list(source.config.prune_locs),
        "profile": str(profile),
        "device": model.table.device.get("name"),
        "measured": model.table.measured,
        "batch": model.table.batch,
        **pred.to_dict(),
        "gflops": source.flops().total,
    }
    if as_json:
        print(json.dumps(info))
        return
    _note(source)
    if not model.table.measured:
        err.print("[yellow]note:[/] this profile is estimated, not measured")
    t = Table(title=f"{src} on {info['device']} (profile {profile})", title_justify="left")
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
    t.add_row("[bold]total[/]", "", f"[bold]{pred.total_ms:.3f}[/]")
    out.print(t)


@app.command("budget")
def budget_cmd(
    profile: ProfileOpt,
    target_ms: Annotated[
        float | None, typer.Option("--target-ms", help="Latency target in ms.")
    ] = None,
    target_fps: Annotated[
        float | None, typer.Option("--target-fps", help="Target frame rate (30 → 33.3 ms).")
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="Pruning method (default: the profile's).")
    ] = None,
    schedule: Annotated[
        str, typer.Option("--schedule", help="geometric ([r, r², r³]) or free (per stage).")
    ] = "geometric",
    locs: LocsOpt = None,
    sensitivity: Annotated[
        Path | None,
        typer.Option("--sensitivity", help="Accuracy per stage and ratio (JSON; see README)."),
    ] = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Budget file to write.")] = Path(
        "budget.json"
    ),
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Pareto plot PNG (default: <out>.pareto.png).")
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write the plot.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Keep ratios that meet a latency target and keep the most tokens (or accuracy)."""
    from edgeprune.atomic import check_writable_target, write_json_atomic
    from edgeprune.budget import budget_dict, load_sensitivity, plot_pareto, search, target_from
    from edgeprune.latency import load_model
    from edgeprune.source import parse_ints

    target = target_from(target_ms, target_fps)
    model = load_model(profile)
    sens = load_sensitivity(sensitivity) if sensitivity is not None else None
    plot_path = None if no_plot else (plot or out_path.with_name(out_path.stem + ".pareto.png"))
    check_writable_target(out_path, force)
    if plot_path is not None:
        check_writable_target(plot_path, force)
    meth = method or model.table.method or "dynamicvit"
    res = search(model, target, meth, schedule, parse_ints(locs, "--locs"), sens, str(sensitivity))
    d = budget_dict(res, model, profile)
    write_json_atomic(out_path, d)
    if plot_path is not None:
        plot_pareto(res, plot_path)
    if as_json:
        print(json.dumps({k: v for k, v in d.items() if k != "profile_table"}))
        return
    if not model.table.measured:
        err.print("[yellow]note:[/] this profile is estimated, not measured")
    c = res.chosen
    if res.status == "dense":
        out.print(
            f"the dense model already meets the target: {res.dense_ms:.3f} ms ≤ "
            f"{target:.3f} ms, no pruning needed (the fastest {res.method} schedule "
            f"{[round(r, 4) for r in res.fastest.keep_ratios]} would predict "
            f"{res.fastest.predicted_ms:.3f} ms)"
        )
    else:
        out.print(
            f"keep ratios {[round(r, 4) for r in c.keep_ratios]} at blocks {list(res.locs)} "
            f"({res.method}, {res.schedule}): predicted {c.predicted_ms:.3f} ms ≤ target "
            f"{target:.3f} ms (margin {res.margin_ms:.3f} ms; dense {res.dense_ms:.3f} ms)"
        )
    out.print(f"tokens/block: {' '.join(map(str, c.plan.attn_tokens))}")
    extra = f", predicted {sens.metric} {c.accuracy:.2f}" if c.accuracy is not None else ""
    out.print(f"GFLOPs {res.gflops():.3f}, kept tokens {c.kept_tokens:g}{extra}")
    out.print(f"[green]wrote[/] {out_path}" + (f" and {plot_path}" if plot_path else ""))


@app.command("validate-profile")
def validate_profile_cmd(
    profile_file: Annotated[Path, typer.Argument(help="The latency table to check.")],
    configs: Annotated[int, typer.Option("--configs", help="Random keep schedules.")] = 20,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Threads (default: the profile's).")
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved timing rounds.")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random schedules.")] = 0,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Scatter PNG (default: <profile>.validate.png).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Export random schedules, measure them end-to-end, report the prediction error."""
    from edgeprune.atomic import check_writable_target
    from edgeprune.latency import load_model
    from edgeprune.validate import plot_validation, validate_profile

    model = load_model(profile_file)
    plot_path = plot or Path(profile_file.stem + ".validate.png")
    check_writable_target(plot_path, force=True)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as prog:
        task = prog.add_task("validating", total=None)
        rep = validate_profile(
            model,
            configs,
            threads,
            rounds,
            seed,
            progress=lambda m: prog.update(task, description=m),
        )
    plot_validation(rep, plot_path)
    if as_json:
        print(json.dumps({**rep.to_dict(), "plot": str(plot_path)}))
        return
    t = Table(title=f"{profile_file}: {rep.method}, {rep.threads} thread(s)", title_justify="left")
    for col in ("keep ratios", "predicted ms", "measured ms", "error"):
        t.add_column(col, justify="right")
    for r in rep.results:
        t.add_row(
            ", ".join(f"{x:g}" for x in r.keep_ratios),
            f"{r.predicted_ms:.3f}",
            f"{r.measured_ms:.3f}",
            f"{r.rel_error:.1%}",
        )
    out.print(t)
    out.print(
        f"|pred − meas| / meas: median {rep.median_error:.1%} (target ≤ 5 %), "
        f"p90 {rep.p90_error:.1%} (target ≤ 10 %) over {len(rep.results)} models"
    )
    out.print(f"[green]wrote[/] {plot_path}")


# ---- end of latency section ---------------------------------------------------------


def _usage_error(e: Exception) -> bool:
    """typer vendors click; recognise its usage errors without importing private modules."""
    return hasattr(e, "format_message") and hasattr(e, "exit_code")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args or os.environ.get("EDGEPRUNE_DEBUG") == "1"
    try:
        rv = app(args=args, prog_name="edgeprune", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return int(e.exit_code)
    except EdgepruneError as e:
        if _state["debug"]:
            raise
        err.print(f"error: {e.one_line()}", markup=False)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print("error: interrupted; nothing was written", markup=False)
        return 130
    except Exception as e:
        if _state["debug"]:
            raise
        if _usage_error(e):  # bad option, missing argument, bad value
            ctx = getattr(e, "ctx", None)
            cmd = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
            msg = " ".join(str(e.format_message()).split())
            if type(e).__name__ == "NoArgsIsHelpError":
                return 2
            err.print(f"error: {msg} (see 'edgeprune{cmd} --help')", markup=False)
            return 2
        msg = " ".join(str(e).split())[:300]
        err.print(
            f"error: internal error {type(e).__name__}: {msg} "
            "(rerun with --debug for the traceback)",
            markup=False,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
