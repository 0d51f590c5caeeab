"""Option groups: options that several commands take together (``Remote``, ``Ops``,
``Pruning``/``ModelChoice``, ``Preprocess``, ``ExportOutput``, ``TargetOptions``). A
command declares one parameter of the group's type and ``@grouped`` spreads the group's
options into the signature typer reads."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_type_hints

from edgeprune.cli.options import (
    OPS,
    BudgetOpt,
    CacheOpt,
    CalibrationOpt,
    DynBatchOpt,
    ExportBatchOpt,
    ExportForceOpt,
    HeadsOpt,
    HereOpt,
    HostOpt,
    ImagesOpt,
    Int8Opt,
    KeepOpt,
    KernelsOpt,
    LocsOpt,
    MeanOpt,
    MethodOpt,
    MinTargetOpt,
    OpsetOpt,
    OutOpt,
    ParityOpt,
    PinOpt,
    PrecisionOpt,
    RemotePythonOpt,
    ResizeOpt,
    SerialOpt,
    SshConfigOpt,
    StdOpt,
    TargetOpt,
    TimeoutOpt,
    TomeROpt,
    UnitsOpt,
    WaitQuietOpt,
    WorkspaceOpt,
    opt,
)
from edgeprune.runtimes.conditions import parse_cpus


# ---- option groups ----------------------------------------------------------------------
class Group:
    """Options that commands take together: a dataclass whose fields are options (type,
    flags, help and default in one place). See ``grouped``."""


def grouped(fn):
    """Let ``fn`` take option groups. In the signature typer reads, a parameter annotated
    with a ``Group`` class stands for that group's options, at its place and with the
    defaults of the parameter's default instance (else the class's); the command is called
    with one instance of the group."""
    spread: dict[str, type[Group]] = {}
    params = []
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        kind = p.annotation
        if not (isinstance(kind, type) and issubclass(kind, Group)):
            params.append(p.replace(kind=p.KEYWORD_ONLY))
            continue
        spread[p.name] = kind
        base = kind() if p.default is p.empty else p.default
        hints = get_type_hints(kind, include_extras=True)
        params += [_keyword(f.name, hints[f.name], getattr(base, f.name)) for f in fields(kind)]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{fn.__name__}: an option group repeats a parameter name")

    @functools.wraps(fn)
    def command(**kw):
        for name, kind in spread.items():
            kw[name] = kind(**{f.name: kw.pop(f.name) for f in fields(kind)})
        return fn(**kw)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _keyword(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


@dataclass
class Remote(Group):
    """Where a measurement runs: this machine, an SSH host or an Android device (adb)."""

    host: HostOpt = None
    remote_python: RemotePythonOpt = None
    ssh_config: SshConfigOpt = None
    timeout: TimeoutOpt = 600.0
    serial: SerialOpt = None
    here: HereOpt = False

    def device(self, name: str):
        """The device descriptor ``name``, reached as these options say."""
        from edgeprune.profiles.devices import device_for

        return device_for(name, self.host, self.remote_python, self.here)

    def transport_options(self) -> dict:
        return {"config": self.ssh_config, "timeout": self.timeout, "serial": self.serial}


@dataclass
class Quiet(Group):
    """How a measurement on this machine keeps other work out of its way: first wait for
    a quiet machine (``--wait-quiet``), run on some CPUs only (``--pin``)."""

    wait_quiet: WaitQuietOpt = None
    pin: PinOpt = None

    def cpus(self) -> tuple[int, ...] | None:
        """``--pin``'s CPUs, checked (a bad value is refused before anything heavy loads)."""
        return parse_cpus(self.pin) if self.pin is not None else None


# ---- bench --ops: a per-operator profile (its options live here: options.py is full) -----
OpsOpt = opt(
    bool,
    "--ops",
    panel=OPS,
    help="Also profile per operator: ms, share and nodes per block and per op kind, the "
    "dense model of the same arch beside (ONNX Runtime here; a .pte: its delegate counts).",
)
OpsBaselineOpt = opt(
    Path | None,
    "--ops-baseline",
    panel=OPS,
    help="The dense .onnx to profile beside (default: exported here from the manifest's arch).",
)
OpsOutOpt = opt(
    Path | None, "--ops-out", panel=OPS, help="Write the profile as JSON here, a PNG beside it."
)
EtdumpOpt = opt(
    Path | None,
    "--etdump",
    panel=OPS,
    help="Read the profile from an ETDump made on a device (executor_runner --etdump_path).",
)
TrtProfileOpt = opt(
    Path | None,
    "--trt-profile",
    panel=OPS,
    help="Read the profile from trtexec --dumpProfile --exportProfile=FILE's JSON.",
)
OpsForceOpt = opt(bool, "--force", "-f", panel=OPS, help="Overwrite an existing --ops-out.")


@dataclass
class Ops(Group):
    """``bench --ops``: a per-operator profile, profiled here or read from a device's file."""

    ops: OpsOpt = False
    ops_baseline: OpsBaselineOpt = None
    ops_out: OpsOutOpt = None
    etdump: EtdumpOpt = None
    trt_profile: TrtProfileOpt = None
    force: OpsForceOpt = False

    def wanted(self) -> bool:
        """Whether any of them asks for a profile (a file given implies --ops)."""
        given = (self.ops_baseline, self.ops_out, self.etdump, self.trt_profile)
        return self.ops or any(v is not None for v in given)

    def options(self, runs: int | None = None):
        """``profiling.bench_ops.OpsOptions`` (None without --ops)."""
        if not self.wanted():
            return None
        from edgeprune.profiling.bench_ops import OpsOptions

        return OpsOptions(
            baseline=self.ops_baseline, etdump=self.etdump, trt_profile=self.trt_profile,
            out=self.ops_out, force=self.force, runs=runs or 20,
        )  # fmt: skip


@dataclass
class Pruning(Group):
    """What overrides a model's pruning: method, keep ratios, locations, heads."""

    method: MethodOpt = None
    keep: KeepOpt = None
    locs: LocsOpt = None
    heads: HeadsOpt = None

    def method_options(self) -> dict | None:
        return None

    def resolve(self, src: str, budget: Path | None = None):
        """``src`` as a ``Source`` with these overrides (and a budget file's)."""
        from edgeprune.budget.file import resolve_with_budget
        from edgeprune.core.source import resolve

        m, opts = self.method, self.method_options()
        if budget is not None:
            return resolve_with_budget(
                src, budget, m, self.keep, self.locs, heads=self.heads, method_options=opts
            )
        return resolve(src, m, self.keep, self.locs, self.heads, opts)


@dataclass
class ModelChoice(Pruning):
    """``Pruning`` plus the method options (--calibration, --tome-r) and --budget."""

    calibration: CalibrationOpt = None
    tome_r: TomeROpt = None
    budget: BudgetOpt = None

    def method_options(self) -> dict:
        return method_options(self.calibration, self.tome_r)

    def resolve(self, src: str, budget: Path | None = None):
        return super().resolve(src, budget or self.budget)


@dataclass
class Preprocess(Group):
    """How images become model inputs: resize, then normalise."""

    resize: ResizeOpt = None
    mean: MeanOpt = None
    std: StdOpt = None

    def into(self, req) -> None:
        """Set ``req.resize``, ``req.mean``, ``req.std`` (parsed)."""
        from edgeprune.core.parsing import parse_triple

        req.resize = self.resize
        req.mean, req.std = parse_triple(self.mean, "--mean"), parse_triple(self.std, "--std")


def method_options(calibration: Path | None = None, tome_r: int | None = None) -> dict:
    """--calibration / --tome-r as the method options ``source.resolve`` takes."""
    opts: dict[str, object] = {}
    if calibration is not None:
        opts["calibration"] = str(calibration)
    if tome_r is not None:
        opts["r"] = tome_r
    return opts


@dataclass
class ExportOutput(Group):
    """What ``export`` writes: the target, where, the graph's static shape, the parity
    check. Field names are ``ExportRequest``'s."""

    target: TargetOpt = "onnx"
    out: OutOpt = None
    batch: ExportBatchOpt = 1
    opset: OpsetOpt = 17
    force: ExportForceOpt = False
    parity_inputs: ParityOpt = 16
    precision: PrecisionOpt = None


@dataclass
class TargetOptions(Group):
    """Options of one target or two, refused on the others. Field names are the targets'
    ``TargetOption`` names."""

    int8: Int8Opt = False
    images: ImagesOpt = None
    custom_kernels: KernelsOpt = False
    dynamic_batch: DynBatchOpt = None
    workspace_mib: WorkspaceOpt = None
    timing_cache: CacheOpt = None
    min_target: MinTargetOpt = None
    compute_units: UnitsOpt = None
