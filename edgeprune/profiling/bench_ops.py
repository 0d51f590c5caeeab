"""``bench ARTIFACT --ops``: the per-operator profile of an artifact (``profiling.ops``),
with the dense model of its architecture profiled beside it; for a ``.pte`` here, the
one line saying why there are no times and the manifest's delegate counts instead."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.core.arch import Arch
from edgeprune.core.atomic import Output, check_outputs, write_json_atomic
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import get_method
from edgeprune.core.source import Source
from edgeprune.export.manifest import read_manifest
from edgeprune.export.onnx import verified_onnx
from edgeprune.profiles.devices import Device
from edgeprune.profiling.ops import (
    OpProfile,
    check_etdump,
    from_session,
    read_etdump,
    read_trtexec_profile,
)
from edgeprune.render.plots import plot_ops
from edgeprune.runtimes.onnxruntime import SessionProfile, profile_session

SCHEMA = "edgeprune.ops"
VERSION = 1
ONNX_SUFFIXES = (".onnx", ".ort")
ETDUMP_LINE = "no ETDump here: ExecuTorch's pip bindings lack the event tracer, so no op times"


# ---- the command: bench ARTIFACT --ops ----------------------------------------------------
@dataclass(kw_only=True)
class OpsOptions:
    """``bench --ops``: ``baseline``, a dense model to profile beside (None: the dense
    model of the artifact's architecture, when its manifest names it); ``etdump`` /
    ``trt_profile``, a profile made on a device, read instead of profiling here; ``out``,
    the profile JSON to write (a PNG beside it); ``runs``/``warmup``: profiled runs."""

    baseline: Path | None = None
    etdump: Path | None = None
    trt_profile: Path | None = None
    out: Path | None = None
    runs: int = 20
    warmup: int = 3
    force: bool = False

    def plot_path(self) -> Path | None:
        return self.out.with_suffix(".png") if self.out is not None else None


@dataclass(kw_only=True)
class OpsResult:
    """``profile``: the artifact's; ``baseline``: the dense model's, beside it (or None,
    ``baseline_from`` says why); ``counts``: what can be said without times (ExecuTorch
    here: the manifest's delegate counts); ``notes``: one line each."""

    artifact: str
    profile: OpProfile | None
    baseline: OpProfile | None = None
    baseline_from: str = ""
    counts: dict | None = None
    notes: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "artifact": self.artifact,
            "profile": self.profile.to_dict() if self.profile else None,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "baseline_from": self.baseline_from,
            "counts": self.counts,
            "notes": list(self.notes),
        }


def check_ops(artifact: Path, device: Device, opts: OpsOptions) -> None:
    """Refuse, before any timing, what ``--ops`` cannot do: a profile file that is not
    there, an output that cannot be written, a device it cannot profile on."""
    for flag, path in (("--etdump", opts.etdump), ("--trt-profile", opts.trt_profile)):
        if path is not None and not Path(path).is_file():
            raise EdgepruneError(f"{flag} {path} does not exist or is not a file")
    if opts.baseline is not None and Path(opts.baseline).suffix.lower() not in ONNX_SUFFIXES:
        raise EdgepruneError(f"--ops-baseline {opts.baseline} is not an .onnx or .ort model")
    if opts.out is not None:
        outs = {
            "--ops-out": Output(opts.out, ".json"),
            "the plot beside --ops-out": opts.plot_path(),
        }
        ins = {"ARTIFACT": artifact, "--ops-baseline": opts.baseline, "--etdump": opts.etdump}
        check_outputs(outs, {**ins, "--trt-profile": opts.trt_profile}, opts.force)
    if opts.etdump is not None:
        check_etdump(opts.etdump)
        return
    if opts.trt_profile is not None:
        read_trtexec_profile(opts.trt_profile)  # a bad file: refused before timing
        return
    suffix = Path(artifact).suffix.lower()
    here = device.transport == "local"
    if here and device.runtime == "onnxruntime" and suffix in ONNX_SUFFIXES:
        return
    if here and device.runtime == "executorch" and suffix == ".pte":
        return
    where = "here" if here else f"through {device.transport}"
    raise EdgepruneError(
        f"--ops cannot profile {Path(artifact).name} on {device.name} ({device.runtime}, {where})",
        "--ops profiles .onnx/.ort on a local onnxruntime device (cpu) and counts a .pte's "
        "delegated ops; for a device elsewhere pass the profile it made (--etdump FILE, "
        "--trt-profile FILE)",
    )


def ops_profile(artifact: Path, threads: int | None, opts: OpsOptions) -> OpsResult:
    """The per-operator profile ``bench --ops`` prints (``check_ops`` first)."""
    from_file = _from_file(artifact, opts)
    if from_file is not None:
        return from_file
    artifact = Path(artifact)
    if artifact.suffix.lower() == ".pte":
        counts = delegate_counts(artifact)
        notes = [ETDUMP_LINE]
        if counts is None:
            notes.append(f"no xnnpack report in the manifest of {artifact.name}: no counts either")
        return OpsResult(artifact=str(artifact), profile=None, counts=counts, notes=notes)
    sp = profile_session(artifact, threads, opts.runs, opts.warmup)
    prof = from_session(sp, artifact.name)
    dense, how = _baseline(artifact, sp, threads, opts)
    return OpsResult(artifact=str(artifact), profile=prof, baseline=dense, baseline_from=how)


def _from_file(artifact: Path, opts: OpsOptions) -> OpsResult | None:
    if opts.etdump is not None:
        prof = read_etdump(opts.etdump)
    elif opts.trt_profile is not None:
        prof = read_trtexec_profile(opts.trt_profile)
    else:
        return None
    note = "a profile read from a file made elsewhere; the dense model is not profiled beside it"
    return OpsResult(artifact=str(artifact), profile=prof, baseline_from=note)


def _baseline(
    artifact: Path, sp: SessionProfile, threads: int | None, opts: OpsOptions
) -> tuple[OpProfile | None, str]:
    """The dense model profiled beside the artifact, and where it came from."""
    if opts.baseline is not None:
        dsp = profile_session(opts.baseline, threads, opts.runs, opts.warmup)
        return from_session(dsp, Path(opts.baseline).name), f"--ops-baseline {opts.baseline}"
    found = read_manifest(artifact)
    if found is None or found[1].spec is None or found[1].spec.arch is None:
        return None, "no dense model: no manifest naming the architecture beside the artifact"
    spec = found[1].spec
    if spec.method == "dense":
        return None, "the artifact is the dense model itself"
    source = dense_source(Arch(**spec.arch.model_dump()))
    batch = next(iter(sp.inputs.values()), (1,))[0]
    data = verified_onnx(source, batch=batch, n_parity_inputs=1).data
    dsp = profile_session(data, threads, opts.runs, opts.warmup)
    how = f"dense {source.arch.name} (random weights), exported to ONNX here as the artifact was"
    return from_session(dsp, f"dense {source.arch.name}"), how


def dense_source(arch: Arch) -> Source:
    """The dense model of ``arch`` with seeded random weights (times do not depend on them)."""
    meth = get_method("dense")
    cfg = meth.config_from_param(None, arch)
    return Source(arch.name, "builtin", arch, meth, cfg, meth.token_plan(arch, cfg))


def delegate_counts(artifact: Path) -> dict | None:
    """A ``.pte``'s manifest's XNNPACK report as counts: delegate segments, ops inside
    them, ops outside by name (counts, not times), or None without one."""
    found = read_manifest(artifact)
    report = (found[1].model_extra or {}).get("xnnpack") if found is not None else None
    if not isinstance(report, dict):
        return None
    outside = report.get("ops_outside_delegates")
    outside = {str(k): _count(v) for k, v in outside.items()} if isinstance(outside, dict) else {}
    return {
        "delegate_segments": _count(report.get("delegate_segments")),
        "ops_in_delegates": _count(report.get("ops_in_delegates")),
        "ops_outside_delegates": outside,
    }


def _count(value: object) -> int:
    """A count as a manifest records it (anything else: 0, never a crash)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else 0


def write_ops(result: OpsResult, opts: OpsOptions) -> OpsResult:
    """``--ops-out``: the profile JSON and, beside it, its PNG (both atomically)."""
    if opts.out is None:
        return result
    write_json_atomic(opts.out, result.to_dict())
    result.written.append(opts.out)
    if result.profile is not None:
        result.written.append(plot_ops(result, opts.plot_path()))
    return result
