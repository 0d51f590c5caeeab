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
HeadsOpt = Annotated[
    int | None,
    typer.Option(
        "--heads", help="Attention heads, when the checkpoint's embed dim is not a DeiT's."
    ),
]


# ---- issue 3: method options (A-ViT calibration, ToMe r) -----------------------------
CalibrationOpt = Annotated[
    Path | None,
    typer.Option("--calibration", help="A-ViT calibration JSON (from 'edgeprune calibrate')."),
]
TomeROpt = Annotated[
    int | None, typer.Option("--tome-r", help="ToMe: tokens merged per block (e.g. 16).")
]


def _method_options(calibration: Path | None = None, tome_r: int | None = None) -> dict:
    opts: dict[str, object] = {}
    if calibration is not None:
        opts["calibration"] = str(calibration)
    if tome_r is not None:
        opts["r"] = tome_r
    return opts


# ---- end issue 3 ----------------------------------------------------------------------


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = _state["debug"] or debug


def _note(source) -> None:
    for n in source.notes:
        err.print(f"[yellow]note:[/] {n}")


def _resolve(src, method, keep, locs, heads, method_options=None):
    from edgeprune.source import resolve

    return resolve(
        src, method=method, keep=keep, locs=locs, heads=heads, method_options=method_options
    )


@app.command()
def inspect(
    src: SrcArg,
    method: MethodOpt = None,
    keep: KeepOpt = None,
    locs: LocsOpt = None,
    heads: HeadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    calibration: CalibrationOpt = None,
    tome_r: TomeROpt = None,
) -> None:
    """Show what a model is: method, arch, keep schedule, tokens per block, params, GFLOPs."""
    source = _resolve(src, method, keep, locs, heads, _method_options(calibration, tome_r))
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
    calibration: CalibrationOpt = None,
    tome_r: TomeROpt = None,
) -> None:
    """Export the static graph and check it against PyTorch; writes a manifest beside it."""
    from edgeprune.export.onnx import export_onnx

    if target != "onnx":
        raise EdgepruneError(f"unknown target '{target}'", "expected: onnx")
    if parity_inputs < 1:
        raise EdgepruneError(f"--parity-inputs {parity_inputs} must be at least 1")
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    source = _resolve(src, method, keep, locs, heads, _method_options(calibration, tome_r))
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


# ---- issue 3: A-ViT calibration -------------------------------------------------------
@app.command()
def calibrate(
    src: SrcArg,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Calibration JSON to write.")],
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of PNG/JPEG calibration images.")
    ] = None,
    random: Annotated[
        int | None, typer.Option("--random", help="Use N seeded random images instead.")
    ] = None,
    quantile: Annotated[
        float, typer.Option("--quantile", help="Per block, keep this quantile of running tokens.")
    ] = 1.0,
    gate_scale: Annotated[float | None, typer.Option("--gate-scale")] = None,
    gate_center: Annotated[float | None, typer.Option("--gate-center")] = None,
    heads: HeadsOpt = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite --out.")] = False,
) -> None:
    """A-ViT: run the masked (released) halting model on calibration images and record
    how many tokens still run in each block; the JSON feeds --calibration."""
    import torch

    from edgeprune.atomic import check_writable_target, write_json_atomic
    from edgeprune.methods.avit import calibrate as run_calibration
    from edgeprune.methods.avit import load_images

    if (images is None) == (random is None):
        raise EdgepruneError("give exactly one of --images DIR or --random N")
    check_writable_target(out_path, force)
    source = _resolve(src, "avit", None, None, heads)
    _note(source)
    a = source.arch
    if images is not None:
        if not images.is_dir():
            raise EdgepruneError(f"--images {images} is not a folder")
        imgs = load_images(images, a.img_size)
    else:
        if random < 1:
            raise EdgepruneError(f"--random {random} must be at least 1")
        g = torch.Generator().manual_seed(0)
        imgs = torch.randn(random, 3, a.img_size, a.img_size, generator=g)
    opts = source.config.options
    scale = float(gate_scale if gate_scale is not None else opts["gate_scale"])
    center = float(gate_center if gate_center is not None else opts["gate_center"])
    data = run_calibration(source.model(), imgs, a, scale, center, quantile)
    data["source"] = src
    write_json_atomic(out_path, data)
    r = data["report"]
    out.print(f"[green]wrote[/] {out_path}")
    out.print(f"tokens/block: {' '.join(map(str, data['counts']))}")
    out.print(
        f"zipped vs masked: top-1 agreement {r['top1_agreement']:.0%}, "
        f"max |logit diff| {r['max_logit_diff']:.3g} over {r['inputs']} inputs"
    )


# ---- end issue 3 ----------------------------------------------------------------------


def _default_name(src: str, source) -> str:
    if source.is_builtin:
        return src.replace(":", "_").replace("@", "_")
    return Path(src).stem


def _install_signal_handlers() -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _terminate(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)


def _usage_error(e: Exception) -> bool:
    """typer vendors click; recognise its usage errors without importing private modules."""
    return hasattr(e, "format_message") and hasattr(e, "exit_code")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _install_signal_handlers()
    _state["debug"] = "--debug" in args or os.environ.get("EDGEPRUNE_DEBUG") == "1"
    try:
        rv = app(args=args, prog_name="edgeprune", standalone_mode=False)
        if rv == 130:  # typer turns KeyboardInterrupt (and our SIGTERM) into exit code 130
            err.print("error: interrupted; nothing was written", markup=False)
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
