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


def _resolve(src, method, keep, locs, heads, method_options=None, budget=None):
    from edgeprune.source import resolve

    if budget is not None:  # --budget FILE sets method, keep and locs (see "latency" below)
        return _resolve_with_budget(src, method, keep, locs, heads, budget, method_options)
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
    budget: BudgetOpt = None,
) -> None:
    """Show what a model is: method, arch, keep schedule, tokens per block, params, GFLOPs."""
    source = _resolve(src, method, keep, locs, heads, _method_options(calibration, tome_r), budget)
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


# `export` options. Common ones are ExportRequest fields; a target-only option is named
# as its TargetOption (export/<target>.py), and the registry refuses it off that target.
TargetOpt = Annotated[
    str, typer.Option("--target", "-t", help="onnx | ort | trt | coreml (see README).")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output (default: <name>.onnx/.ort/.engine/.mlpackage)."),
]
BatchOpt = Annotated[int, typer.Option("--batch", "-b", help="Static batch size of the graph.")]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (≥ 17).")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
ParityOpt = Annotated[
    int, typer.Option("--parity-inputs", help="Random inputs for the parity check.")
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option("--precision", help="trt: fp32 (default) | fp16; coreml: fp16 (default) | fp32."),
]
Int8Opt = Annotated[bool, typer.Option("--int8", help="ort: dynamic int8 quantization.")]
DynBatchOpt = Annotated[
    str | None, typer.Option("--dynamic-batch", help="trt: MIN,OPT,MAX optimization profile.")
]
WorkspaceOpt = Annotated[
    int | None, typer.Option("--workspace", help="trt: builder workspace in MiB (1024).")
]
CacheOpt = Annotated[
    Path | None, typer.Option("--timing-cache", help="trt: timing cache file (reused).")
]
MinTargetOpt = Annotated[
    str | None,
    typer.Option("--min-target", help="coreml: ios15..ios18, macos12..macos15 (ios17)."),
]
UnitsOpt = Annotated[
    str | None,
    typer.Option(
        "--compute-units", help="coreml: all | cpu_only | cpu_and_gpu | cpu_and_ne (all)."
    ),
]


@app.command()
def export(
    src: SrcArg,
    target: TargetOpt = "onnx",
    out_path: OutOpt = None,
    batch: BatchOpt = 1,
    opset: OpsetOpt = 17,
    force: ForceOpt = False,
    parity_inputs: ParityOpt = 16,
    precision: PrecisionOpt = None,
    int8: Int8Opt = False,
    dynamic_batch: DynBatchOpt = None,
    workspace_mib: WorkspaceOpt = None,
    timing_cache: CacheOpt = None,
    min_target: MinTargetOpt = None,
    compute_units: UnitsOpt = None,
    method: MethodOpt = None,
    keep: KeepOpt = None,
    locs: LocsOpt = None,
    heads: HeadsOpt = None,
    calibration: CalibrationOpt = None,
    tome_r: TomeROpt = None,
    budget: BudgetOpt = None,
) -> None:
    """Export the static graph to a target and check it against PyTorch; writes a manifest."""
    from edgeprune.export.targets import export_source, request_from, validate

    req = validate(request_from(dict(locals()), out=out_path))  # before loading anything
    source = _resolve(src, method, keep, locs, heads, _method_options(calibration, tome_r), budget)
    _note(source)
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
        step = lambda msg: prog.update(task, description=msg)  # noqa: E731
        result = export_source(source, req, _default_name(src, source), step)
    _report_export(result)
    if result.error is not None:
        raise result.error


def _report_export(result) -> None:
    from rich.markup import escape

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
        out.print(
            f"parity vs PyTorch ({p['runtime']}): max |diff| {p['max_abs_diff']:.2e}, top-1 "
            f"agreement {p['top1_agreement']:.0%} over {p['inputs']} inputs "
            f"(limits {p['atol']:g}, {p['min_top1_agreement']:.0%})"
        )
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}")
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
    from edgeprune.images import load_images
    from edgeprune.methods.avit import calibrate as run_calibration

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
# =====================================================================================
# ---- issue 4: devices, profile, bench (runtimes, device descriptors, SSH) -----------
# =====================================================================================
HostOpt = Annotated[
    str | None,
    typer.Option("--host", help="Reach the device over SSH at user@addr (or an ssh-config alias)."),
]
SshConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--ssh-config",
        help="ssh config file for -F (default: $EDGEPRUNE_SSH_CONFIG, else ssh's own).",
    ),
]
RemotePythonOpt = Annotated[
    str | None,
    typer.Option("--remote-python", help="Python with edgeprune on the remote host."),
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", help="Overall limit (s) for one remote command over SSH."),
]
HereOpt = Annotated[
    bool, typer.Option("--here", hidden=True, help="Measure on this machine (remote end).")
]


def _device_for(name: str, host: str | None, remote_python: str | None, here: bool):
    from edgeprune.profiles.devices import get_device

    dev = get_device(name).at_host(host, remote_python)
    return dev.here() if here else dev


def _transport(dev, ssh_config: str | None, timeout: float):
    from edgeprune.runtimes.ssh import SSHTransport

    return SSHTransport(dev.host or "", config=ssh_config, timeout=timeout)


class _TermAsInterrupt:
    """SIGTERM behaves like Ctrl-C while a measurement runs (nothing half-written)."""

    def __enter__(self):
        import signal

        def _raise(_sig, _frm):
            raise KeyboardInterrupt

        try:
            self._old = signal.signal(signal.SIGTERM, _raise)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


@app.command()
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-host check (s).")] = 4.0,
) -> None:
    """List the device descriptors and whether each can be reached from here."""
    from edgeprune.profiles.devices import all_devices, reachability_all

    devs = list(all_devices().values())
    checks = reachability_all(devs, timeout)
    rows = [
        {**d.to_dict(), "aliases": list(d.aliases), "reachable": ok, "why": why}
        for d, (ok, why) in zip(devs, checks, strict=True)
    ]
    if as_json:
        print(json.dumps({"devices": rows}))
        return
    t = Table(title="devices", title_justify="left")
    for col in ("name", "runtime", "precision", "threads", "reach", "reachable", "why"):
        t.add_column(col)
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        reach = r["transport"] if r["transport"] == "local" else f"ssh {r['host']}"
        t.add_row(
            name,
            r["runtime"],
            r["precision"],
            str(r["threads"] or "all"),
            reach,
            "[green]yes[/]" if r["reachable"] else "[red]no[/]",
            r["why"],
        )
    out.print(t)


@app.command()
def profile(
    device: Annotated[str, typer.Option("--device", "-d", help="Device name (edgeprune devices).")],
    arch: Annotated[str, typer.Option("--arch", help="deit_tiny, deit_small, deit_base.")] = (
        "deit_small"
    ),
    method: Annotated[
        str | None, typer.Option("--method", help="Also time this method's selector.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Threads (default: the device's).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Batch size.")] = 1,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output JSON (default: profile_*.json).")
    ] = None,
    runs: Annotated[
        int | None, typer.Option("--runs", help="Timed runs per point (default: adaptive).")
    ] = None,
    grid: Annotated[
        str | None, typer.Option("--grid", help="Token counts: 1,8,16,197 or step:8.")
    ] = None,
    check_points: Annotated[
        int, typer.Option("--check-points", help="Off-grid points to check interpolation.")
    ] = 4,
    chain: Annotated[
        int,
        typer.Option(
            "--chain", help="Time blocks as a chain of N distinct blocks (as inside a model)."
        ),
    ] = 4,
    halves: Annotated[
        bool, typer.Option("--halves/--no-halves", help="Also time attn and MLP halves.")
    ] = True,
    e2e: Annotated[
        bool,
        typer.Option(
            "--e2e/--no-e2e",
            help="Also time whole models (dense, the method's schedules) and fit the "
            "end-to-end correction of the sum of pieces.",
        ),
    ] = True,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write a PNG beside it.")] = True,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite --out.")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Save progress to <out>.partial.json after every piece and continue "
            "from it if present (same options needed).",
        ),
    ] = False,
    host: HostOpt = None,
    remote_python: RemotePythonOpt = None,
    ssh_config: SshConfigOpt = None,
    timeout: TimeoutOpt = 900.0,
    here: HereOpt = False,
) -> None:
    """Measure a device's latency table (block/attn/mlp vs tokens, embed, head, selectors)."""
    import time

    from edgeprune.arch import get_arch
    from edgeprune.atomic import check_writable_target
    from edgeprune.bench import policy_for
    from edgeprune.methods import get_method
    from edgeprune.profile import ProfileRequest, measure, parse_grid
    from edgeprune.runtimes.timing import TimingPolicy

    dev = _device_for(device, host, remote_python, here)
    a = get_arch(arch)
    if method is not None:
        method = get_method(method).name
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    if threads is not None and threads < 1:
        raise EdgepruneError(f"--threads {threads} must be at least 1")
    dest = out_path or Path(f"profile_{dev.name}_{a.name}{'_' + method if method else ''}.json")
    check_writable_target(dest, force)
    png = dest.with_suffix(".png")
    if plot:
        check_writable_target(png, True)
    req = ProfileRequest(
        dev,
        a,
        method,
        threads=threads,
        batch=batch,
        grid=parse_grid(grid, a.num_tokens),
        policy=policy_for(runs) if runs else TimingPolicy(),
        check_points=check_points,
        halves=halves,
        chain=chain,
        e2e=e2e,
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = time.perf_counter()
    with (
        _TermAsInterrupt(),
        Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as prog,
    ):
        task = prog.add_task(f"{dev.name}", total=None)

        def step(desc: str, i: int, n: int) -> None:
            prog.update(task, description=desc, completed=i, total=n)

        partial = dest.with_name(dest.name + ".partial.json") if resume else None
        if dev.transport == "ssh":
            if resume:
                raise EdgepruneError("--resume is not supported over SSH yet", "drop --resume")
            from edgeprune.remote import profile_over_ssh

            table = profile_over_ssh(req, _transport(dev, ssh_config, timeout), runs, step)
        else:
            try:
                table = measure(req, step, resume=partial)
            except KeyboardInterrupt:
                if partial is not None and partial.exists():
                    err.print(
                        f"note: progress kept in {partial}; rerun with --resume", markup=False
                    )
                raise
        table.save(dest)
        if partial is not None:
            partial.unlink(missing_ok=True)
    secs = time.perf_counter() - t0
    if plot:
        from edgeprune.plot import plot_table

        plot_table(table, png)
    d = table.device
    out.print(
        f"[green]wrote[/] {dest}{f' and {png}' if plot else ''}  ({secs:.0f} s; "
        f"{d['runtime']} {d.get('runtime_version', '')}, {d.get('precision', '')}, "
        f"{d['threads']} threads, batch {table.batch}, host {d.get('host', 'local')})"
    )
    n = table.block.tokens[-1]
    out.print(
        f"block @ {n} tokens: {table.block.at(n):.3f} ms median; embed "
        f"{table.embed.median_ms:.3f} ms; head {table.head.median_ms:.3f} ms"
    )
    chk = table.extra.get("interp_check")
    if chk:
        out.print(
            f"interpolation check: max error {chk['max_rel_err']:.1%} over "
            f"{len(chk['points'])} off-grid points"
        )
    if table.e2e is not None:
        fit = table.extra.get("e2e_fit", [])
        worst = max((abs(r["corrected_ms"] / r["measured_ms"] - 1) for r in fit), default=0.0)
        out.print(
            f"end-to-end: {len(table.e2e.anchors)} whole models; predicted = "
            f"{table.e2e.offset_ms:+.3f} ms + {table.e2e.scale:.3f} × pieces "
            f"(anchors within {worst:.1%})"
        )


@app.command()
def bench(
    artifact: Annotated[Path, typer.Argument(help="Exported artifact (.onnx, …).")],
    device: Annotated[str, typer.Option("--device", "-d", help="Device name.")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", help="Threads.")] = None,
    runs: Annotated[
        int | None, typer.Option("--runs", help="Timed runs (default: adaptive, ≥ 20).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    host: HostOpt = None,
    remote_python: RemotePythonOpt = None,
    ssh_config: SshConfigOpt = None,
    timeout: TimeoutOpt = 600.0,
    here: HereOpt = False,
) -> None:
    """End-to-end latency of one artifact: median, p90, min, max, runs."""
    from edgeprune.bench import bench as run_bench

    if threads is not None and threads < 1:
        raise EdgepruneError(f"--threads {threads} must be at least 1")
    dev = _device_for(device, host, remote_python, here)
    if not artifact.exists():
        raise EdgepruneError(f"artifact {artifact} does not exist")
    with _TermAsInterrupt():
        if dev.transport == "ssh":
            from edgeprune.bench import policy_for
            from edgeprune.remote import bench_over_ssh

            policy_for(runs)
            t = bench_over_ssh(artifact, dev, _transport(dev, ssh_config, timeout), threads, runs)
        else:
            t = run_bench(artifact, dev, threads, runs)
    info = {"artifact": str(artifact), "device": dev.name, "host": dev.host or "local"}
    info.update(t.to_dict())
    if as_json:
        print(json.dumps(info))
        return
    out.print(
        f"{artifact} on {dev.name} ({t.runtime} {t.runtime_version}, {t.threads} threads): "
        f"median {t.median_ms:.3f} ms, p90 {t.p90_ms:.3f} ms, min {t.min_ms:.3f}, "
        f"max {t.max_ms:.3f} over {t.runs} runs"
    )


@app.command("profile-info")
def profile_info(
    path: Annotated[Path, typer.Argument(help="A latency table written by 'profile'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the validated table.")] = False,
) -> None:
    """Validate a latency table and summarise it."""
    from edgeprune.latency_table import load

    t = load(path)
    if as_json:
        print(json.dumps(t.to_dict()))
        return
    d = t.device
    out.print(
        f"{path}: {t.arch.name}{' + ' + t.method if t.method else ''} on {d['name']} "
        f"({d['runtime']} {d.get('runtime_version', '')}, {d.get('precision', '')}, "
        f"{d['threads']} threads, batch {t.batch}, {'measured' if t.measured else 'ESTIMATED'}, "
        f"{t.date})"
    )
    for n in (t.block.tokens[0], 68, t.block.tokens[-1]):
        out.print(f"  block @ {n:>3} tokens: {t.block.at(n):.3f} ms")


# ---- end of issue 4 section ----------------------------------------------------------


@app.command()
def check(
    model: Annotated[Path, typer.Argument(help="An ONNX model.", show_default=False)],
    target: Annotated[str, typer.Option("--target", "-t", help="trt | coreml | ort.")] = "trt",
) -> None:
    """Static report of what in an ONNX graph a target will reject or run slowly.
    Exit 0 when clean, 1 when not."""
    from edgeprune.export.targets import check_file

    findings = check_file(model, target)
    if not findings:
        out.print(f"[green]clean:[/] nothing in {model} that {target} rejects or runs slowly")
        return
    t = Table(title=f"{model} on {target}: {len(findings)} finding(s)", title_justify="left")
    for col in ("severity", "rule", "where", "detail"):
        t.add_column(col)
    for f in findings:
        t.add_row(
            "[red]error[/]" if f.severity == "error" else "[yellow]slow[/]",
            f.rule,
            f.where,
            f.detail,
        )
    out.print(t)
    raise typer.Exit(1)


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


def _resolve_with_budget(src, method, keep, locs, heads, budget_path: Path, method_options=None):
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
        method_options=method_options,
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
    source = _resolve(src, method, keep, locs, heads, budget=budget)
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
    if pred.overhead_ms or pred.scale != 1.0:
        t.add_row(f"end-to-end offset (parts × {pred.scale:.3f})", "", f"{pred.overhead_ms:.3f}")
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
    if plot_path is not None and sens is not None:
        from edgeprune.sensitivity import measured_curves, plot_accuracy_pareto

        plot_accuracy_pareto(res, sens, model, plot_path, measured_curves(res, sens, model))
    elif plot_path is not None:
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
    if sens is not None:
        from edgeprune.sensitivity import chosen_summary

        out.print(chosen_summary(res, sens), soft_wrap=True)
    out.print(f"[green]wrote[/] {out_path}" + (f" and {plot_path}" if plot_path else ""))


@app.command("validate-profile")
def validate_profile_cmd(
    profile_file: Annotated[Path, typer.Argument(help="The latency table to check.")],
    configs: Annotated[int, typer.Option("--configs", help="Random keep schedules.")] = 20,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Threads (default: the profile's).")
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Interleaved timing rounds.")] = 30,
    burst: Annotated[
        int,
        typer.Option(
            "--burst",
            help="Runs per model per round, the first discarded (1: single cold runs).",
        ),
    ] = 3,
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
            burst=burst,
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
    if rep.drift is not None:
        out.print(
            f"machine drift since profiling: {rep.drift:+.1%} (the profile's "
            f"{len(rep.anchors)} whole-model anchors re-timed now; included in the error)"
        )
    out.print(f"[green]wrote[/] {plot_path}")


# ---- end of latency section ---------------------------------------------------------


# =====================================================================================
# ---- accuracy: evaluate, sensitivity, finetune, demo-images (issue 15) --------------
# =====================================================================================
ImagesOpt = Annotated[
    Path,
    typer.Option(
        "--images",
        help="Image folder: class sub-folders (labelled, sorted names = class index) or "
        "flat (unlabelled). 'edgeprune demo-images DIR' writes one.",
        show_default=False,
    ),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use only the first N images.")]
ResizeOpt = Annotated[
    int | None,
    typer.Option("--resize", help="Shorter side before the center crop (default crop/0.875)."),
]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Normalisation mean (ImageNet's).")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Normalisation std (ImageNet's).")]


def _triple(text: str | None, what: str) -> tuple[float, ...] | None:
    from edgeprune.source import parse_floats

    v = parse_floats(text, what)
    if v is not None and len(v) != 3:
        raise EdgepruneError(f"{what} needs three numbers (R,G,B), got {len(v)}")
    return v


def _bar(what: str):
    """A rich progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"{what:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


@app.command("demo-images")
def demo_images(
    folder: Annotated[Path, typer.Argument(help="New folder to write.", show_default=False)],
    classes: Annotated[int, typer.Option("--classes", help="Class sub-folders.")] = 4,
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class.")] = 8,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a small ImageNet-style folder of synthetic images (no dataset download)."""
    from edgeprune.images import write_demo_images

    imgs = write_demo_images(folder, classes, per_class, size, seed)
    out.print(f"[green]wrote[/] {len(imgs.files)} images in {len(imgs.classes)} classes: {folder}")


@app.command()
def evaluate(
    model: Annotated[
        str,
        typer.Argument(help="SRC, or an exported artifact (.onnx, .ort, …).", show_default=False),
    ],
    images: ImagesOpt,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Compare with this SRC (default: the artifact's source)."),
    ] = None,
    limit: LimitOpt = None,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Images per forward pass.")] = 16,
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="Runtime for an artifact (default: by suffix).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Runtime (and PyTorch) threads.")
    ] = None,
    method: MethodOpt = None,
    keep: KeepOpt = None,
    locs: LocsOpt = None,
    heads: HeadsOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Top-1/top-5 on an image folder and agreement (top-1, KL, max logit diff) with references."""
    from edgeprune.evaluate import EvalRequest
    from edgeprune.evaluate import evaluate as run_evaluate

    req = EvalRequest(model, images, reference, limit, batch, runtime, threads, heads, resize)
    req.mean, req.std = _triple(mean, "--mean"), _triple(std, "--std")
    req.method, req.keep, req.locs = method, keep, locs
    with _bar("evaluating") as prog:
        task = prog.add_task("evaluating", total=None)
        rep = run_evaluate(req, lambda i, n: prog.update(task, completed=i, total=n))
    d = rep.to_dict()
    if as_json:
        print(json.dumps(d))
        return
    _render_evaluation(d)


def _render_evaluation(d: dict) -> None:
    from edgeprune.evaluate import fmt_pct

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
        "labels" if acc else "—",
        fmt_pct(acc and acc["top1"]),
        fmt_pct(acc and acc["top5"]),
        "",
        "",
        "",
    )
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


@app.command()
def sensitivity(
    src: SrcArg,
    images: ImagesOpt,
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="Sensitivity JSON to write.")
    ] = Path("sensitivity.json"),
    grid: Annotated[
        str | None, typer.Option("--grid", help="Keep ratios per stage (0.1,0.2,…,1.0).")
    ] = None,
    limit: LimitOpt = None,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Images per forward pass.")] = 16,
    method: MethodOpt = None,
    locs: LocsOpt = None,
    heads: HeadsOpt = None,
    resize: ResizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="top1 | agreement (default: top1 when labelled)."),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Keep progress in <out>.partial.json; continue it.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite --out.")] = False,
) -> None:
    """Accuracy per pruning stage and keep ratio (others not pruning): the file that
    'budget --sensitivity' reads. Top-1 when labelled, else agreement with dense."""
    from edgeprune.atomic import check_writable_target, write_json_atomic
    from edgeprune.sensitivity import SensitivityRequest, measure, parse_grid
    from edgeprune.source import parse_ints

    check_writable_target(out_path, force)
    req = SensitivityRequest(src, images, parse_grid(grid), limit, batch, heads, resize)
    req.mean, req.std = _triple(mean, "--mean"), _triple(std, "--std")
    req.method, req.locs, req.metric = method, parse_ints(locs, "--locs"), metric
    req.threads = threads
    partial = out_path.with_name(out_path.name + ".partial.json") if resume else None
    with _TermAsInterrupt(), _bar("sensitivity") as prog:
        task = prog.add_task("sensitivity", total=None)
        try:
            data = measure(req, partial, lambda d, i, n: prog.update(task, completed=i, total=n))
        except KeyboardInterrupt:
            if partial is not None and partial.exists():
                err.print(f"note: progress kept in {partial}; rerun with --resume", markup=False)
            raise
    write_json_atomic(out_path, data)
    for n in data["notes"]:
        err.print(f"[yellow]note:[/] {n}")
    out.print(f"{data['metric_description']}; dense {data['dense']:.2f}")
    for loc, st in data["stages"].items():
        pts = ", ".join(
            f"{r:g}: {a:.1f}" for r, a in zip(st["keep_ratios"], st["accuracy"], strict=True)
        )
        out.print(f"stage {loc}: {pts}")
    out.print(f"[green]wrote[/] {out_path}")


@app.command()
def finetune(
    src: SrcArg,
    images: ImagesOpt,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.pth).")],
    profile: Annotated[
        Path | None, typer.Option("--profile", "-p", help="Latency profile (with --target-ms).")
    ] = None,
    target_ms: Annotated[float | None, typer.Option("--target-ms", help="Latency target.")] = None,
    budget: BudgetOpt = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 100,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Images per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Predictor learning rate (cosine).")] = 3e-3,
    backbone_lr_scale: Annotated[
        float, typer.Option("--backbone-lr-scale", help="Backbone lr = lr × this (0: frozen).")
    ] = 0.01,
    latency_weight: Annotated[
        float, typer.Option("--latency-weight", help="Weight of the latency-aware loss.")
    ] = 10.0,
    shape: Annotated[
        str, typer.Option("--shape", help="Loss shape: squared | hinge | squared_hinge.")
    ] = "squared",
    locs: LocsOpt = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads.")] = None,
    limit: LimitOpt = None,
    heads: HeadsOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """DynamicViT fine-tuning (dense teacher, KL distillation, Gumbel keep masks) with the
    latency-aware sparsity loss in place of the keep-ratio MSE; logs predicted ms per step."""
    from edgeprune.atomic import check_writable_target
    from edgeprune.finetune import FinetuneRequest, save_checkpoint
    from edgeprune.finetune import finetune as run_finetune

    check_writable_target(out_path, force)
    req = FinetuneRequest(src, images, profile, budget, target_ms, steps, batch, lr)
    req.backbone_lr_scale, req.latency_weight, req.shape = backbone_lr_scale, latency_weight, shape
    req.locs, req.device, req.seed, req.limit = _ints(locs), device, seed, limit
    req.heads, req.threads = heads, threads
    with _TermAsInterrupt():
        res, model = run_finetune(req, None if as_json else _step_logger(steps))
    save_checkpoint(model, res, out_path)
    if as_json:
        d = {**res.to_dict(), "checkpoint": str(out_path)}
        print(json.dumps({**d, "predicted_ms_per_step": [s.predicted_ms for s in res.steps]}))
        return
    for n in res.notes:
        err.print(f"[yellow]note:[/] {n}")
    out.print(
        f"predicted {res.start_ms:.3f} ms at the start (dense {res.dense_ms:.3f}) → "
        f"{res.final_ms:.3f} ms for the learned keep ratios {list(res.keep_ratios)} "
        f"(target {res.target_ms:.3f} ms; {len(res.steps)} steps in {res.seconds:.1f} s)"
    )
    keep = ",".join(f"{r:g}" for r in res.keep_ratios)
    out.print(
        f"[green]wrote[/] {out_path}; export it with: edgeprune export {out_path} "
        f"--keep {keep} --locs {','.join(map(str, res.locs))}",
        soft_wrap=True,
    )


def _step_logger(steps: int):
    """Prints the predicted ms (and the losses) every steps/20 steps and at the end."""
    every = max(1, steps // 20)

    def log(st, n: int) -> None:
        if st.step % every == 0 or st.step == n - 1:
            ce = f" ce {st.ce:.3f}" if st.ce is not None else ""
            out.print(
                f"step {st.step + 1:>4}/{n}  predicted {st.predicted_ms:.3f} ms  keep "
                f"{[round(k, 2) for k in st.keep]}  kl {st.distill:.4f} tok {st.token_distill:.4f}"
                f"{ce} lat {st.latency_loss:.4f}",
                soft_wrap=True,
            )

    return log


def _ints(text: str | None):
    from edgeprune.source import parse_ints

    return parse_ints(text, "--locs")


# ---- end of accuracy section -----------------------------------------------------------


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
        err.print(f"error: {e.one_line()}", markup=False, soft_wrap=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print("error: interrupted; nothing was written", markup=False, soft_wrap=True)
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
            err.print(f"error: {msg} (see 'edgeprune{cmd} --help')", markup=False, soft_wrap=True)
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
