"""TensorRT target: verified ONNX → serialized ``.engine`` (+ parity), or, where no
TensorRT is installed, the verified ONNX plus the exact trtexec line for the device.

Outputs beside ``out`` (``m.engine``): ``m.onnx`` (the verified float32 graph),
``m.fp16.onnx`` (with ``--precision fp16``: the FP16 graph TensorRT 11 needs) and
``m.engine.manifest.json`` (one manifest for the whole export, with the trtexec
commands; written also when no engine could be built here).
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.core.atomic import atomic_path, write_json_atomic
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.export.check import COMMON_OPS, Finding, Graph, errors_of
from edgeprune.export.fp16 import to_fp16
from edgeprune.export.manifest import (
    base_manifest,
    manifest_path,
    prepare_outputs,
    sha256_file,
    skipped,
)
from edgeprune.export.onnx import INPUT_NAME, OUTPUT_NAME, io_spec, verified_onnx
from edgeprune.export.parity import check_parity, parity_inputs
from edgeprune.export.registry import Target, TargetOption, Tolerance, register
from edgeprune.runtimes.tensorrt.engine import (
    ApiRunner,
    TrtexecEngineRunner,
    build_engine_api,
    find_builder,
    run_trtexec,
)

if TYPE_CHECKING:
    from edgeprune.core.source import Source
    from edgeprune.export.registry import ExportRequest, ExportResult

PRECISIONS = ("fp32", "fp16")
# Tolerances against PyTorch fp32. fp32 engines may use TF32 on Ampere and newer
# (TensorRT's default), hence 1e-2 rather than the ONNX check's 1e-4. FP16 logits
# move by ~0.1 on DeiT-T (and a pruned model can keep a different token on a
# near-tie), so FP16 is judged by top-1 agreement ≥ 90 % and max |diff| ≤ 0.5.
TOLERANCE = {"fp32": Tolerance(1e-2, 0.99), "fp16": Tolerance(0.5, 0.9)}
TOPK_MAX = 3840  # TensorRT's limit on K
# TensorRT 10 ONNX parser (onnx-tensorrt docs/operators.md), the ops a ViT may use
SUPPORTED_OPS = COMMON_OPS | {
    "ConstantOfShape",
    "CumSum",
    "DequantizeLinear",
    "GatherND",
    "NonZero",
    "QuantizeLinear",
    "ScatterElements",
    "ScatterND",
    "Trilu",
    "OneHot",
    "Mod",
}


@dataclass(frozen=True)
class TrtOptions:
    precision: str = "fp32"
    workspace_mib: int = 1024
    dynamic_batch: tuple[int, int, int] | None = None  # MIN, OPT, MAX
    timing_cache: Path | None = None

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgepruneError(
                f"--precision {self.precision} is not supported for --target trt",
                "use fp32 or fp16 (int8 needs calibration data, not supported yet)",
            )
        if self.workspace_mib < 1:
            raise EdgepruneError(f"--workspace {self.workspace_mib} must be a positive MiB count")
        if self.dynamic_batch is not None:
            lo, opt, hi = self.dynamic_batch
            if not 1 <= lo <= opt <= hi:
                raise EdgepruneError(f"--dynamic-batch {lo},{opt},{hi} needs 1 ≤ MIN ≤ OPT ≤ MAX")


def parse_dynamic_batch(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise EdgepruneError(
            f"--dynamic-batch '{text}' is not MIN,OPT,MAX", "e.g. --dynamic-batch 1,8,32"
        )
    return vals  # type: ignore[return-value]


def _shape(b: int, chw: tuple[int, int, int]) -> str:
    return "x".join(map(str, (b, *chw)))


def trtexec_command(
    onnx: Path,
    engine: Path,
    opts: TrtOptions,
    chw: tuple[int, int, int],
    trt_major: int = 10,
    trtexec: str = "trtexec",
) -> list[str]:
    """The trtexec line that builds ``engine`` from ``onnx`` (give the FP16 ONNX for
    TensorRT ≥ 11 with fp16: it has no precision flags)."""
    cmd = [
        trtexec,
        f"--onnx={onnx}",
        f"--saveEngine={engine}",
        f"--memPoolSize=workspace:{opts.workspace_mib}M",
    ]
    if opts.precision == "fp16" and trt_major < 11:
        cmd.append("--fp16")
    if opts.dynamic_batch is not None:
        lo, opt, hi = opts.dynamic_batch
        cmd += [
            f"--minShapes={INPUT_NAME}:{_shape(lo, chw)}",
            f"--optShapes={INPUT_NAME}:{_shape(opt, chw)}",
            f"--maxShapes={INPUT_NAME}:{_shape(hi, chw)}",
        ]
    if opts.timing_cache is not None:
        cmd.append(f"--timingCacheFile={opts.timing_cache}")
    cmd.append("--skipInference")
    return cmd


def export_trt(
    source: Source, out: Path, opts: TrtOptions, req: ExportRequest, progress=None
) -> dict:
    """Build and check an engine; returns the manifest. ``manifest["engine"]["status"]``
    is ``"verified"``, ``"unverified"`` (built, parity could not run) or
    ``"not_built"`` (no TensorRT here: the ONNX and the commands are kept)."""

    out = Path(out)
    opts.validate()
    batch, opset, force, n_parity_inputs = req.batch, req.opset, req.force, req.parity_inputs
    onnx_path = out.with_suffix(".onnx")
    fp16_path = out.with_suffix(".fp16.onnx")
    side = (onnx_path,) + ((fp16_path,) if opts.precision == "fp16" else ())
    mpath = prepare_outputs(out, TrtTarget.accepted_suffixes(), force, side)
    step = progress or (lambda _msg: None)
    dyn = opts.dynamic_batch
    if dyn is not None:
        batch = dyn[1]
    v = verified_onnx(
        source, batch, opset, n_parity_inputs, dynamic_batch=dyn is not None, progress=step
    )
    problems = errors_of(TrtTarget().graph_rules(Graph(v.proto)))
    if problems:
        raise EdgepruneError(
            f"TensorRT cannot build this graph: {'; '.join(problems[:3])}", exit_code=1
        )
    img = source.arch.img_size
    chw = (3, img, img)

    fp16_bytes = None
    fp16_parity = None
    if opts.precision == "fp16":
        step("converting the ONNX to FP16 (for TensorRT 11)")
        fp16_bytes = to_fp16(v.proto).SerializeToString()
        fp16_parity = check_parity(
            "the FP16 ONNX", source, fp16_bytes, batch, n_parity_inputs, TOLERANCE["fp16"],
            hint="no file was written; try --precision fp32",
        )  # fmt: skip

    # file names only: the line is run on the device, in the folder holding these files
    name = Path(out.name)
    onnx_for_11 = fp16_path if fp16_bytes else onnx_path
    commands = {
        "tensorrt10": trtexec_command(Path(onnx_path.name), name, opts, chw, 10),
        "tensorrt11": trtexec_command(Path(onnx_for_11.name), name, opts, chw, 11),
    }
    manifest = base_manifest(source, "trt", out, batch, "tensorrt")
    manifest.update(
        {
            "precision": opts.precision,
            "workspace_mib": opts.workspace_mib,
            "dynamic_batch": list(dyn) if dyn else None,
            "timing_cache": str(opts.timing_cache) if opts.timing_cache else None,
            **io_spec(source, "batch" if dyn else batch),
            "onnx": {
                "file": onnx_path.name,
                "opset": opset,
                "ops": v.ops(),
                "parity": v.parity.to_dict(),
            },
            "trtexec_commands": {k: shlex.join(c) for k, c in commands.items()},
            "tolerance": TOLERANCE[opts.precision].to_dict(),
        }
    )
    if fp16_bytes is not None:
        manifest["onnx_fp16"] = {"file": fp16_path.name, "parity": fp16_parity.to_dict()}

    builder = find_builder()
    with contextlib.ExitStack() as stack:  # every file appears together, or none
        step("writing the verified ONNX")
        onnx_tmp = stack.enter_context(atomic_path(onnx_path))
        _write(onnx_tmp, v.data, manifest["onnx"])
        fp16_tmp = None
        if fp16_bytes is not None:
            fp16_tmp = stack.enter_context(atomic_path(fp16_path))
            _write(fp16_tmp, fp16_bytes, manifest["onnx_fp16"])
        if builder is None:
            manifest["engine"] = {
                "status": "not_built",
                "reason": "neither the tensorrt Python module nor trtexec is available here",
            }
            manifest["parity"] = skipped("no TensorRT here: build the engine on the device")
            write_json_atomic(mpath, manifest)
            return manifest
        manifest["builder"] = builder.describe()
        use_fp16_onnx = fp16_tmp is not None and builder.major >= 11
        engine_onnx = fp16_tmp if use_fp16_onnx else onnx_tmp
        tmp = stack.enter_context(atomic_path(out))
        step(f"building the engine ({builder.kind}, TensorRT {builder.version})")
        runner = _build(builder, engine_onnx, tmp, opts, chw)
        step("parity check (engine vs PyTorch)")
        manifest["parity"] = _engine_parity(source, runner, opts, batch, n_parity_inputs)
        status = manifest["parity"]["status"]
        manifest["engine"] = {
            "status": "verified" if status == "passed" else "unverified",
            "built_from": (fp16_path if use_fp16_onnx else onnx_path).name,
        }
        manifest["sha256"] = sha256_file(tmp)
        write_json_atomic(mpath, manifest)
    return manifest


def _build(builder, onnx_file: Path, engine_tmp: Path, opts: TrtOptions, chw):
    """Build the engine into ``engine_tmp``; return a runner for it."""
    if builder.kind == "api":
        data = build_engine_api(
            onnx_file.read_bytes(),
            opts.precision,
            opts.workspace_mib,
            INPUT_NAME,
            chw,
            opts.dynamic_batch,
            opts.timing_cache,
        )
        engine_tmp.write_bytes(data)
        return ApiRunner(data, INPUT_NAME, OUTPUT_NAME)

    cmd = trtexec_command(onnx_file, engine_tmp, opts, chw, builder.major, builder.path)
    run_trtexec(cmd, "building the engine")
    if engine_tmp.stat().st_size == 0:
        raise EdgepruneError("trtexec reported success but wrote no engine", exit_code=1)
    return TrtexecEngineRunner(
        builder.path, engine_tmp, INPUT_NAME, OUTPUT_NAME, opts.dynamic_batch is not None
    )


def _engine_parity(source: Source, runner, opts: TrtOptions, batch: int, n: int) -> dict:
    first = runner(next(iter(parity_inputs(batch, source.arch.img_size, 1, seed=99))).numpy())
    if first is None:
        return skipped("this trtexec wrote no --exportOutput file; the engine was not run")
    tol = TOLERANCE[opts.precision]
    return check_parity(
        "the engine", source, runner, batch, n, tol, "tensorrt", "nothing was written"
    ).to_dict()


def _write(tmp: Path, data: bytes, record: dict) -> None:
    tmp.write_bytes(data)
    record["sha256"] = sha256_file(tmp)


def _parse_dynamic_batch(text: str) -> tuple[int, int, int]:
    vals = parse_dynamic_batch(text)
    TrtOptions(dynamic_batch=vals).validate()
    return vals


def _parse_workspace(mib: int) -> int:
    TrtOptions(workspace_mib=mib).validate()
    return mib


@register
class TrtTarget(Target):
    """TensorRT: a serialized engine (built here when TensorRT or trtexec is found, else
    the verified ONNX and the trtexec line for the device)."""

    name = "trt"
    suffix = ".engine"
    suffixes = (".engine", ".plan", ".trt")
    precisions = PRECISIONS
    tolerances = TOLERANCE
    options = (
        TargetOption("dynamic_batch", "--dynamic-batch", parse=_parse_dynamic_batch),
        TargetOption("workspace_mib", "--workspace", default=1024, parse=_parse_workspace),
        TargetOption("timing_cache", "--timing-cache", parse=Path),
    )
    supported_ops = SUPPORTED_OPS
    slow_ops = {"NonZero": "data-dependent shape: breaks static engines, runs on the host"}
    computed_topk = "error"
    dynamic_dim_note = " (needs an optimization profile)"

    def graph_rules(self, graph: Graph) -> list[Finding]:
        out = []
        for node in (n for n in graph.nodes if n.op_type == "TopK"):
            where, k = graph.where(node), graph.topk_k(node)
            if k is not None and k > TOPK_MAX:
                out.append(Finding("error", "TopK K too large", where, f"K={k} > {TOPK_MAX}"))
            if not next((a.i for a in node.attribute if a.name == "sorted"), 1):
                out.append(Finding("error", "unsorted TopK", where, "TensorRT needs sorted=1"))
        return out

    def export(self, source: Source, req: ExportRequest, out: Path, progress=None) -> ExportResult:
        o = req.options
        opts = TrtOptions(req.precision, o["workspace_mib"], o["dynamic_batch"], o["timing_cache"])
        man = export_trt(source, out, opts, req, progress)
        result = self.result(out, man)
        status = man["engine"]["status"]
        if status == "unverified":
            result.warnings.append("the engine was built but NOT verified (parity did not run)")
        if status == "not_built":
            result.written = False
            onnx_file = Path(out).with_name(man["onnx"]["file"])
            result.kept.append(f"the verified ONNX {onnx_file} (parity passed)")
            result.next_steps = _build_lines(man)
            result.error = MissingRuntimeError(
                "neither TensorRT (Python) nor trtexec is available here; no engine was built",
                f"the trtexec line is printed above and in {manifest_path(out).name}",
            )
        return result


def _build_lines(man: dict) -> list[str]:
    lines = ["build the engine on the device (in the folder holding the files):"]
    lines.append(f"  TensorRT 10: {man['trtexec_commands']['tensorrt10']}")
    if man["precision"] == "fp16":
        lines.append(f"  TensorRT 11: {man['trtexec_commands']['tensorrt11']}")
    return lines
