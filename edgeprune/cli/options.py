"""The command line's option and argument types (typer ``Annotated`` aliases), shared by
the commands in ``cli.py`` and ``cli_accuracy.py``, and the option groups that several
commands take together (``Remote``, ``Pruning``/``ModelChoice``, ``Preprocess``): a
command declares one parameter of the group's type and ``@grouped`` spreads the group's
options into the signature typer reads."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, get_type_hints

import typer


def _literal(text: str) -> str:
    """Help shows as written: typer renders it as rich markup, where "[...]" is a tag
    ("ARCH[:METHOD[@RATIO]]" lost its brackets, "geometric ([r, r², r³])" its list)."""
    return text.replace("[", "\\[")


def opt(kind, *names: str, **kw):
    if kw.get("help"):
        kw["help"] = _literal(kw["help"])
    return Annotated[kind, typer.Option(*names, **kw)]


def arg(kind, help: str, **kw):  # noqa: A002 (typer's name)
    return Annotated[kind, typer.Argument(help=_literal(help), **kw)]


# ---- a model: SRC and what overrides it ---------------------------------------------
SrcArg = arg(
    str,
    "Checkpoint file (.pth/.pt) or built-in spec ARCH[:METHOD[@RATIO]], "
    "e.g. deit_small:dynamicvit@0.7 (random weights).",
    show_default=False,
)
MethodOpt = opt(
    str | None, "--method", help="Force the method (default: from the checkpoint keys)."
)
KeepOpt = opt(str | None, "--keep", help="Per-stage keep ratios, e.g. 0.7,0.49,0.343.")
LocsOpt = opt(str | None, "--locs", help="Pruning locations (block indices), e.g. 3,6,9.")
BudgetOpt = opt(
    Path | None, "--budget", help="A budget file from 'edgeprune budget': sets method/keep/locs."
)
HeadsOpt = opt(
    int | None, "--heads", help="Attention heads, when the checkpoint's embed dim is not a DeiT's."
)
CalibrationOpt = opt(
    Path | None, "--calibration", help="A-ViT calibration JSON (from 'edgeprune calibrate')."
)
TomeROpt = opt(int | None, "--tome-r", help="ToMe: tokens merged per block (e.g. 16).")

DebugOpt = opt(bool, "--debug", help="Show full tracebacks on errors.")
CheckTimeoutOpt = opt(float, "--timeout", help="Per-host check (s).")
InfoJsonOpt = opt(bool, "--json", help="Print the validated table.")
ValidateArg = arg(Path, "The latency table to check.")
OnnxArg = arg(Path, "An ONNX model.", show_default=False)
CheckTargetOpt = opt(str, "--target", "-t", help="trt | coreml | ort.")

# ---- common -----------------------------------------------------------------------------
JsonOpt = opt(bool, "--json", help="Print one JSON object.")
ForceOpt = opt(bool, "--force", "-f", help="Overwrite outputs.")
ThreadsOpt = opt(int | None, "--threads", help="Threads (default: the device's).")
ProfileOpt = opt(
    Path, "--profile", "-p", help="A latency table (from 'edgeprune profile').", show_default=False
)

# ---- export: common ones are ExportRequest fields; a target-only option is named as its
# TargetOption (export/<target>.py), and the registry refuses it off that target.
TargetOpt = opt(str, "--target", "-t", help="onnx | ort | trt | coreml | executorch (see README).")
OutOpt = opt(
    Path | None, "--out", "-o", help="Output (default: <name>.onnx/.ort/.engine/.mlpackage)."
)
ExportBatchOpt = opt(int, "--batch", "-b", help="Static batch size of the graph.")
OpsetOpt = opt(int, "--opset", help="ONNX opset (≥ 17).")
ExportForceOpt = opt(bool, "--force", "-f", help="Overwrite an existing output.")
ParityOpt = opt(int, "--parity-inputs", help="Random inputs for the parity check.")
PrecisionOpt = opt(
    str | None, "--precision", help="trt: fp32 (default) | fp16; coreml: fp16 (default) | fp32."
)
Int8Opt = opt(bool, "--int8", help="ort: dynamic int8; executorch: PT2E int8 (XNNPACK).")
KernelsOpt = opt(
    bool,
    "--custom-kernels",
    help="executorch: ToMe's merge as one edgeprune kernel (built here with g++; a phone's "
    "executor_runner must include runtimes/kernels).",
)
DynBatchOpt = opt(str | None, "--dynamic-batch", help="trt: MIN,OPT,MAX optimization profile.")
WorkspaceOpt = opt(int | None, "--workspace", help="trt: builder workspace in MiB (1024).")
CacheOpt = opt(Path | None, "--timing-cache", help="trt: timing cache file (reused).")
MinTargetOpt = opt(
    str | None, "--min-target", help="coreml: ios15..ios18, macos12..macos15 (ios17)."
)
UnitsOpt = opt(
    str | None, "--compute-units", help="coreml: all | cpu_only | cpu_and_gpu | cpu_and_ne (all)."
)

# ---- calibrate --------------------------------------------------------------------------
CalibOutOpt = opt(Path, "--out", "-o", help="Calibration JSON to write.")
ImagesOpt = opt(Path | None, "--images", help="Folder of PNG/JPEG calibration images.")
RandomOpt = opt(int | None, "--random", help="Use N seeded random images instead.")
QuantileOpt = opt(float, "--quantile", help="Per block, keep this quantile of running tokens.")
GateScaleOpt = opt(float | None, "--gate-scale")
GateCenterOpt = opt(float | None, "--gate-center")

# ---- devices, profile, bench: where and how to measure ----------------------------------
DeviceOpt = opt(str, "--device", "-d", help="Device name (edgeprune devices).")
HostOpt = opt(
    str | None, "--host", help="Reach the device over SSH at user@addr (or an ssh-config alias)."
)
SshConfigOpt = opt(
    str | None,
    "--ssh-config",
    help="ssh config file for -F (default: $EDGEPRUNE_SSH_CONFIG, else ssh's own).",
)
RemotePythonOpt = opt(
    str | None, "--remote-python", help="Python with edgeprune on the remote host."
)
TimeoutOpt = opt(float, "--timeout", help="Overall limit (s) for one remote command (SSH, adb).")
SerialOpt = opt(
    str | None, "--serial", help="adb: the Android device's serial (else $ANDROID_SERIAL)."
)
BenchDeviceOpt = opt(
    str | None, "--device", "-d", help="Device name (default: cpu; cpu-xnnpack for a .pte)."
)
HereOpt = opt(bool, "--here", hidden=True, help="Measure on this machine (remote end).")
ArchOpt = opt(str, "--arch", help="deit_tiny, deit_small, deit_base.")
SweepMethodOpt = opt(str | None, "--method", help="Also time this method's selector.")
BatchOpt = opt(int, "--batch", "-b", help="Batch size.")
TableOutOpt = opt(Path | None, "--out", "-o", help="Output JSON (default: profile_*.json).")
SweepRunsOpt = opt(int | None, "--runs", help="Timed runs per point (default: adaptive).")
GridOpt = opt(str | None, "--grid", help="Token counts: 1,8,16,197 or step:8.")
CheckPointsOpt = opt(int, "--check-points", help="Off-grid points to check interpolation.")
ChainOpt = opt(
    int, "--chain", help="Time blocks as a chain of N distinct blocks (as inside a model)."
)
HalvesOpt = opt(bool, "--halves/--no-halves", help="Also time attn and MLP halves.")
E2eOpt = opt(
    bool,
    "--e2e/--no-e2e",
    help="Also time whole models (dense, the method's schedules) and fit the "
    "end-to-end correction of the sum of pieces.",
)
PlotFlagOpt = opt(bool, "--plot/--no-plot", help="Write a PNG beside it.")
ResumeOpt = opt(
    bool,
    "--resume",
    help="Save progress to <out>.partial.json after every piece and continue "
    "from it if present (same options needed).",
)
ArtifactArg = arg(Path, "Exported artifact (.onnx, …).")
BenchRunsOpt = opt(int | None, "--runs", help="Timed runs (default: adaptive, ≥ 20).")
TableArg = arg(Path, "A latency table written by 'profile'.")

# ---- predict, budget, validate-profile -------------------------------------------------
PredictBatchOpt = opt(int, "--batch", "-b", help="Batch size to predict for.")
TargetMsOpt = opt(float | None, "--target-ms", help="Latency target in ms.")
TargetFpsOpt = opt(float | None, "--target-fps", help="Target frame rate (30 → 33.3 ms).")
BudgetMethodOpt = opt(str | None, "--method", help="Pruning method (default: the profile's).")
ScheduleOpt = opt(str, "--schedule", help="geometric ([r, r², r³]) or free (per stage).")
SensitivityOpt = opt(
    Path | None, "--sensitivity", help="Accuracy per stage and ratio (JSON; see README)."
)
BudgetOutOpt = opt(Path, "--out", "-o", help="Budget file to write.")
ParetoOpt = opt(Path | None, "--plot", help="Pareto plot PNG (default: <out>.pareto.png).")
NoPlotOpt = opt(bool, "--no-plot", help="Do not write the plot.")
ConfigsOpt = opt(int, "--configs", help="Random keep schedules.")
ValThreadsOpt = opt(int | None, "--threads", help="Threads (default: the profile's).")
RoundsOpt = opt(int, "--rounds", help="Interleaved timing rounds.")
MarginOpt = opt(
    str, "--margin", help="Aim under the target: auto (the table's measured error), 3%, 0."
)
VerifyOpt = opt(
    bool, "--verify", help="Export the choice, time it against dense here; exit 1 if missed."
)
ReanchorOpt = opt(
    bool,
    "--reanchor/--no-reanchor",
    help="With --verify: time dense here first and choose on the table scaled to this "
    "machine's speed now (--no-reanchor: verify the table's own choice).",
)
BurstOpt = opt(
    int, "--burst", help="Runs per model per round, the first discarded (1: single cold runs)."
)
SeedOpt = opt(int, "--seed", help="Seed of the random schedules.")
ScatterOpt = opt(Path | None, "--plot", help="Scatter PNG (default: <profile>.validate.png).")


# accuracy: demo-images, evaluate, sensitivity, finetune (issue 15)
EvalImagesOpt = opt(
    Path,
    "--images",
    help="Image folder: class sub-folders (labelled, sorted names = class index) or "
    "flat (unlabelled). 'edgeprune demo-images DIR' writes one.",
    show_default=False,
)
LimitOpt = opt(int | None, "--limit", help="Use only the first N images.")
ResizeOpt = opt(int | None, "--resize", help="Shorter side before the center crop (crop/0.875).")
MeanOpt = opt(str | None, "--mean", help="Normalisation mean (ImageNet's).")
StdOpt = opt(str | None, "--std", help="Normalisation std (ImageNet's).")
EvalBatchOpt = opt(int, "--batch", "-b", help="Images per forward pass.")
TorchThreadsOpt = opt(int | None, "--threads", help="PyTorch CPU threads.")
EvalThreadsOpt = opt(int | None, "--threads", help="Runtime (and PyTorch) threads.")
DemoFolderArg = arg(Path, "New folder to write.", show_default=False)
ClassesOpt = opt(int, "--classes", help="Class sub-folders.")
PerClassOpt = opt(int, "--per-class", help="Images per class.")
SizeOpt = opt(int, "--size", help="Image side in pixels.")
DemoSeedOpt = opt(int, "--seed", help="Seed of the synthetic images.")
ModelArg = arg(str, "SRC, or an exported artifact (.onnx, .ort, …).", show_default=False)
ReferenceOpt = opt(
    str | None, "--reference", help="Compare with this SRC (default: the artifact's source)."
)
RuntimeOpt = opt(str | None, "--runtime", help="Runtime for an artifact (default: by suffix).")
SensOutOpt = opt(Path, "--out", "-o", help="Sensitivity JSON to write.")
SensGridOpt = opt(str | None, "--grid", help="Keep ratios per stage (0.1,0.2,…,1.0).")
MetricOpt = opt(str | None, "--metric", help="top1 | agreement (default: top1 when labelled).")
SensResumeOpt = opt(bool, "--resume", help="Keep progress in <out>.partial.json; continue it.")
CkptOutOpt = opt(Path, "--out", "-o", help="Checkpoint to write (.pth).")
FtProfileOpt = opt(Path | None, "--profile", "-p", help="Latency profile (with --target-ms).")
StepsOpt = opt(int, "--steps", help="Optimizer steps.")
StepBatchOpt = opt(int, "--batch", "-b", help="Images per step.")
LrOpt = opt(float, "--lr", help="Predictor learning rate (cosine).")
BackboneLrOpt = opt(float, "--backbone-lr-scale", help="Backbone lr = lr × this (0: frozen).")
LatWeightOpt = opt(float, "--latency-weight", help="Weight of the latency-aware loss.")
ShapeOpt = opt(str, "--shape", help="Loss shape: squared | hinge | squared_hinge.")
TrainDeviceOpt = opt(str, "--device", help="cpu or cuda.")
TrainSeedOpt = opt(int, "--seed", help="Training seed.")


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
            return resolve_with_budget(src, budget, m, self.keep, self.locs, self.heads, opts)
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
