"""The command line's option and argument types (typer ``Annotated`` aliases, each with
its --help panel), shared by the command modules; option groups are in ``groups``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer


def _literal(text: str) -> str:
    """Help shows as written: typer renders it as rich markup, where "[...]" is a tag
    ("ARCH[:METHOD[@RATIO]]" lost its brackets, "geometric ([r, r², r³])" its list)."""
    return text.replace("[", "\\[")


# --help panels: the options of a command grouped by what they are about
MODEL = "Model"
OUTPUT = "Output"
INT8 = "int8 and calibration"
TRT = "TensorRT (--target trt)"
COREML = "Core ML (--target coreml)"
EXECUTORCH = "ExecuTorch (--target executorch)"
REMOTE = "Reaching the device"
MEASURE = "Measuring"
SWEEP = "What the sweep times"
SEARCH = "Search"
VERIFY = "Verify (--verify)"
IMAGES = "Images"
TRAINING = "Training"
OPS = "Per-operator profile (--ops)"


def opt(kind, *names: str, panel: str | None = None, **kw):
    """An option. ``panel``: its --help panel. A bool option is a flag: no value shown."""
    if kw.get("help"):
        kw["help"] = _literal(kw["help"])
    if kind is bool:
        kw.setdefault("metavar", "")
    return Annotated[kind, typer.Option(*names, rich_help_panel=panel, **kw)]


def arg(kind, help: str, **kw):  # noqa: A002 (typer's name)
    return Annotated[kind, typer.Argument(help=_literal(help), **kw)]


def is_folder(value: Path | None) -> Path | None:
    """An option naming an existing folder, refused before the command loads anything."""
    if value is not None and not value.is_dir():
        raise typer.BadParameter(f"{value} is not a folder")
    return value


def is_new_folder(value: Path | None) -> Path | None:
    """An argument naming a folder to write: absent, or an empty folder."""
    if value is not None and value.exists():
        if not value.is_dir():
            raise typer.BadParameter(f"{value} exists and is not a folder")
        if any(value.iterdir()):
            raise typer.BadParameter(f"{value} exists and is not empty")
    return value


# an input file must exist (and be a file): refused before the command loads anything
EXISTING = {"exists": True, "dir_okay": False}

# the longest limit or wait an option takes: 11.6 days (longer ones overflow poll())
MAX_SECONDS = 1_000_000.0


def positive_seconds(value: float | None) -> float | None:
    """A time limit (``--timeout``, ``--max-time``): finite, > 0 (0 is not "no limit")."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise typer.BadParameter(f"{value:g} is not a time limit: give seconds in (0, 1000000]")
    return value


def some_seconds(value: float | None) -> float | None:
    """A wait (``--wait-quiet``, ``--cooldown``): finite, ≥ 0."""
    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        raise typer.BadParameter(f"{value:g} is not a wait: give seconds in [0, 1000000]")
    return value


# ---- a model: SRC and what overrides it ---------------------------------------------
SrcArg = arg(
    str,
    "Checkpoint file (.pth/.pt) or built-in spec ARCH[:METHOD[@RATIO]], "
    "e.g. deit_small:dynamicvit@0.7 (random weights).",
    show_default=False,
)
MethodOpt = opt(
    str | None,
    "--method",
    panel=MODEL,
    help="Force the method (default: from the checkpoint keys).",
)
KeepOpt = opt(str | None, "--keep", panel=MODEL, help="Per-stage keep ratios, e.g. 0.7,0.49,0.343.")
LocsOpt = opt(
    str | None, "--locs", panel=MODEL, help="Pruning locations (block indices), e.g. 3,6,9."
)
BudgetOpt = opt(
    Path | None,
    "--budget",
    panel=MODEL,
    help="A budget file from 'edgeprune budget': sets method/keep/locs.",
    **EXISTING,
)
HeadsOpt = opt(
    int | None,
    "--heads",
    panel=MODEL,
    help="Attention heads, when the checkpoint's embed dim is not a DeiT's.",
)
CalibrationOpt = opt(
    Path | None,
    "--calibration",
    panel=MODEL,
    help="A-ViT calibration JSON (from 'edgeprune calibrate').",
    **EXISTING,
)
TomeROpt = opt(int | None, "--tome-r", panel=MODEL, help="ToMe: tokens merged per block (e.g. 16).")

DebugOpt = opt(bool, "--debug", help="Show full tracebacks on errors.")
CheckTimeoutOpt = opt(float, "--timeout", help="Per-host check (s).", callback=positive_seconds)
InfoJsonOpt = opt(bool, "--json", help="Print the validated table.")
ValidateArg = arg(Path, "The latency table to validate.", **EXISTING)
OnnxArg = arg(Path, "An ONNX model, or an artifact (fallbacks).", show_default=False, **EXISTING)
CheckTargetOpt = opt(str, "--target", "-t", help="trt | coreml | ort.")
StrictOpt = opt(bool, "--strict", help="Fail on ops outside the delegate/provider too.")

# ---- common -----------------------------------------------------------------------------
JsonOpt = opt(bool, "--json", help="Print one JSON object.")
VerboseOpt = opt(bool, "--verbose", "-v", help="Also show what the expected latency is made of.")
ForceOpt = opt(bool, "--force", "-f", help="Overwrite outputs.")
ThreadsOpt = opt(int | None, "--threads", help="Threads (default: the device's).")
# a latency table (what 'edgeprune profile' writes); --profile is its old, hidden name
# (app.OPTION_ALIASES)
TableOpt = opt(
    Path,
    "--table",
    "-p",
    help="A latency table (from 'edgeprune profile').",
    show_default=False,
    **EXISTING,
)

# ---- export: common ones are ExportRequest fields; a target-only option is named as its
# TargetOption (export/<target>.py), and the registry refuses it off that target.
TargetOpt = opt(
    str,
    "--target",
    "-t",
    panel=OUTPUT,
    help="onnx | ort | trt | coreml | executorch (docs/targets.md).",
)
OutOpt = opt(
    Path | None,
    "--out",
    "-o",
    panel=OUTPUT,
    help="Output (default: <name>.onnx/.ort/.engine/.mlpackage/.pte).",
)
ExportBatchOpt = opt(int, "--batch", "-b", panel=OUTPUT, help="Static batch size of the graph.")
OpsetOpt = opt(int, "--opset", panel=OUTPUT, help="ONNX opset (≥ 17).")
ExportForceOpt = opt(bool, "--force", "-f", panel=OUTPUT, help="Overwrite an existing output.")
ParityOpt = opt(int, "--parity-inputs", panel=OUTPUT, help="Random inputs for the parity check.")
PrecisionOpt = opt(
    str | None,
    "--precision",
    panel=OUTPUT,
    help="trt: fp32 (default) | fp16; coreml: fp16 (default) | fp32.",
)
Int8Opt = opt(
    bool, "--int8", panel=INT8, help="ort: dynamic int8; executorch: PT2E int8 (XNNPACK)."
)
KernelsOpt = opt(
    bool,
    "--custom-kernels",
    panel=EXECUTORCH,
    help="ToMe's merge as one edgeprune kernel (built here with g++; a phone's "
    "executor_runner must include edgeprune/core/backends/kernels).",
)
DynBatchOpt = opt(
    str | None, "--dynamic-batch", panel=TRT, help="MIN,OPT,MAX optimization profile."
)
WorkspaceOpt = opt(int | None, "--workspace", panel=TRT, help="Builder workspace in MiB (1024).")
CacheOpt = opt(Path | None, "--timing-cache", panel=TRT, help="Timing cache file (reused).")
MinTargetOpt = opt(
    str | None, "--min-target", panel=COREML, help="ios15..ios18, macos12..macos15 (ios17)."
)
UnitsOpt = opt(
    str | None,
    "--compute-units",
    panel=COREML,
    help="all | cpu_only | cpu_and_gpu | cpu_and_ne (all).",
)

# ---- calibrate --------------------------------------------------------------------------
CalibOutOpt = opt(Path, "--out", "-o", help="Calibration JSON to write.")
ImagesOpt = opt(
    Path | None,
    "--images",
    panel=INT8,
    help="Folder of PNG/JPEG calibration images.",
    callback=is_folder,
)
RandomOpt = opt(int | None, "--random", help="Use N seeded random images instead.")
QuantileOpt = opt(float, "--quantile", help="Per block, keep this quantile of running tokens.")
GateScaleOpt = opt(float | None, "--gate-scale")
GateCenterOpt = opt(float | None, "--gate-center")

# ---- devices, profile, bench: where and how to measure ----------------------------------
DeviceOpt = opt(str, "--device", "-d", help="Device name (edgeprune devices).")
HostOpt = opt(
    str | None,
    "--host",
    panel=REMOTE,
    help="Reach the device over SSH at user@addr (or an ssh-config alias).",
)
SshConfigOpt = opt(
    str | None,
    "--ssh-config",
    panel=REMOTE,
    help="ssh config file for -F (default: $EDGEPRUNE_SSH_CONFIG, else ssh's own).",
)
RemotePythonOpt = opt(
    str | None, "--remote-python", panel=REMOTE, help="Python with edgeprune on the remote host."
)
TimeoutOpt = opt(
    float,
    "--timeout",
    panel=REMOTE,
    help="Overall limit (s) for one remote command (SSH, adb).",
    callback=positive_seconds,
)
SerialOpt = opt(
    str | None,
    "--serial",
    panel=REMOTE,
    help="adb: the Android device's serial (else $ANDROID_SERIAL).",
)
BenchDeviceOpt = opt(
    str | None, "--device", "-d", help="Device name (default: cpu; cpu-xnnpack for a .pte)."
)
HereOpt = opt(bool, "--here", hidden=True, help="Measure on this machine (remote end).")
ArchOpt = opt(str, "--arch", help="deit_tiny, deit_small, deit_base.")
SweepMethodOpt = opt(str | None, "--method", panel=SWEEP, help="Also time this method's selector.")
BatchOpt = opt(int, "--batch", "-b", help="Batch size.")
TableOutOpt = opt(Path | None, "--out", "-o", help="Output JSON (default: profile_*.json).")
SweepRunsOpt = opt(int | None, "--runs", panel=MEASURE, help="Timed runs per point (adaptive).")
GridOpt = opt(str | None, "--grid", panel=SWEEP, help="Token counts: 1,8,16,197 or step:8.")
CheckPointsOpt = opt(int, "--check-points", panel=SWEEP, help="Off-grid points to check.")
ChainOpt = opt(
    int,
    "--chain",
    panel=SWEEP,
    help="Time blocks as a chain of N distinct blocks (as inside a model).",
)
HalvesOpt = opt(bool, "--halves/--no-halves", panel=SWEEP, help="Also time attn and MLP halves.")
E2eOpt = opt(
    bool,
    "--e2e/--no-e2e",
    panel=SWEEP,
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
ArtifactArg = arg(Path, "Exported artifact (.onnx, …).", exists=True)
# evaluate, bench, check: an artifact's sha256 is checked against its manifest first
NoVerifyHashOpt = opt(
    bool,
    "--no-verify-hash",
    help="Use the artifact even if its sha256 differs from its manifest's (the output "
    "says it was not checked).",
)
BenchRunsOpt = opt(
    int | None,
    "--runs",
    panel=MEASURE,
    help="Exactly N timed runs (default: until the median's 95 % interval is within "
    "the tolerance, at least 20).",
)
ToleranceOpt = opt(
    float | None,
    "--tolerance",
    panel=MEASURE,
    help="Time until the median's 95 % interval is within ± this many % of it (2).",
)
MaxTimeOpt = opt(
    float | None,
    "--max-time",
    panel=MEASURE,
    help="Stop timing after this many seconds, the interval reached or not (10).",
    callback=positive_seconds,
)
# --wait-quiet given without a value waits this long (app.OPTIONAL_VALUES)
WAIT_QUIET_S = 60.0
WaitQuietOpt = opt(
    float | None,
    "--wait-quiet",
    panel=MEASURE,
    metavar="[<float>]",
    help=f"First wait, up to this many seconds ({WAIT_QUIET_S:g} when given alone), until "
    "other processes leave this machine's CPUs alone; measure anyway after.",
    callback=some_seconds,
)
PinOpt = opt(
    str | None,
    "--pin",
    panel=MEASURE,
    help="Run on these CPUs only, e.g. 1, 0,1 or 0-3.",
)
CooldownOpt = opt(
    float,
    "--cooldown",
    panel=MEASURE,
    help="Rest this many seconds before timing (a phone cools down); thermal zones are "
    "read before and after.",
    callback=some_seconds,
)
TableArg = arg(Path, "A latency table written by 'profile'.", **EXISTING)

# ---- predict, budget, validate-profile -------------------------------------------------
PredictBatchOpt = opt(int, "--batch", "-b", help="Batch size to predict for.")
TargetMsOpt = opt(float | None, "--target-ms", panel=SEARCH, help="Latency target in ms.")
TargetFpsOpt = opt(
    float | None, "--target-fps", panel=SEARCH, help="Target frame rate (30 → 33.3 ms)."
)
BudgetMethodOpt = opt(
    str | None, "--method", panel=SEARCH, help="Pruning method (default: the profile's)."
)
ScheduleOpt = opt(
    str, "--schedule", panel=SEARCH, help="geometric ([r, r², r³]) or free (per stage)."
)
SensitivityOpt = opt(
    Path | None,
    "--sensitivity",
    panel=SEARCH,
    help="Accuracy per stage and ratio (from 'edgeprune sensitivity').",
    **EXISTING,
)
ExtrapolateOpt = opt(
    bool,
    "--extrapolate",
    panel=SEARCH,
    help="With --sensitivity: also weigh keep ratios below the lowest measured "
    "(marked extrapolated in the output, the file and the plot).",
)
BudgetOutOpt = opt(Path, "--out", "-o", help="Budget file to write.")
ParetoOpt = opt(Path | None, "--plot", help="Pareto plot PNG (default: <out>.pareto.png).")
NoPlotOpt = opt(bool, "--no-plot", help="Do not write the plot.")
ConfigsOpt = opt(int, "--configs", panel=MEASURE, help="Random keep schedules.")
ValThreadsOpt = opt(int | None, "--threads", help="Threads (default: the profile's).")
RoundsOpt = opt(int, "--rounds", panel=MEASURE, help="Interleaved timing rounds.")
MarginOpt = opt(
    str,
    "--margin",
    panel=SEARCH,
    help="Aim under the target: auto (the table's measured error), 3%, 0.",
)
VerifyOpt = opt(
    bool,
    "--verify",
    panel=VERIFY,
    help="Export the choice, time it against dense here; exit 1 if missed.",
)
ReanchorOpt = opt(
    bool,
    "--reanchor/--no-reanchor",
    panel=VERIFY,
    help="With --verify: time dense here first and choose on the table scaled to this "
    "machine's speed now (--no-reanchor: verify the table's own choice).",
)
BurstOpt = opt(
    int,
    "--burst",
    panel=MEASURE,
    help="Runs per model per round, the first discarded (1: single cold runs).",
)
SeedOpt = opt(int, "--seed", panel=MEASURE, help="Seed of the random schedules.")
ScatterOpt = opt(Path | None, "--plot", help="Scatter PNG (default: <table>.validate.png).")


# accuracy: demo-images, evaluate, sensitivity, finetune (issue 15)
EvalImagesOpt = opt(
    Path,
    "--images",
    help="Image folder: class sub-folders (labelled, sorted names = class index) or "
    "flat (unlabelled). 'edgeprune demo-images DIR' writes one.",
    show_default=False,
    callback=is_folder,
)
LimitOpt = opt(int | None, "--limit", panel=IMAGES, help="Use only the first N images.")
ResizeOpt = opt(
    int | None, "--resize", panel=IMAGES, help="Shorter side before the center crop (crop/0.875)."
)
MeanOpt = opt(str | None, "--mean", panel=IMAGES, help="Normalisation mean (ImageNet's).")
StdOpt = opt(str | None, "--std", panel=IMAGES, help="Normalisation std (ImageNet's).")
EvalBatchOpt = opt(int, "--batch", "-b", panel=IMAGES, help="Images per forward pass.")
TorchThreadsOpt = opt(int | None, "--threads", help="PyTorch CPU threads.")
EvalThreadsOpt = opt(int | None, "--threads", help="Runtime (and PyTorch) threads.")
DemoFolderArg = arg(Path, "New folder to write.", show_default=False, callback=is_new_folder)
# the bounds core/images.py keeps (DEMO_MAX_SIZE, DEMO_MAX_IMAGES), refused here first
ClassesOpt = opt(int, "--classes", help="Class sub-folders.", min=1, max=1000)
PerClassOpt = opt(int, "--per-class", help="Images per class.", min=1, max=100_000)
SizeOpt = opt(int, "--size", help="Image side in pixels.", min=8, max=2048)
DemoSeedOpt = opt(int, "--seed", help="Seed of the synthetic images.")
ValPerClassOpt = opt(
    int | None, "--val-per-class", help="Also a val/ split: FOLDER/train, FOLDER/val.", min=1
)
ModelArg = arg(str, "SRC, or an exported artifact (.onnx, .ort, …).", show_default=False)
ReferenceOpt = opt(
    str | None, "--reference", help="Compare with this SRC (default: the artifact's source)."
)
RuntimeOpt = opt(str | None, "--runtime", help="Runtime for an artifact (default: by suffix).")
SensOutOpt = opt(Path, "--out", "-o", help="Sensitivity JSON to write.")
SensGridOpt = opt(str | None, "--grid", help="Keep ratios per stage (0.1,0.2,…,1.0).")
MetricOpt = opt(str | None, "--metric", help="top1 | agreement (default: top1 when labelled).")
SensResumeOpt = opt(bool, "--resume", help="Keep progress in <out>.partial.json; continue it.")
