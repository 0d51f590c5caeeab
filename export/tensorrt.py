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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from edgeprune.core.atomic import atomic_path, write_json_atomic
from edgeprune.core.backends.tensorrt import (
    ApiRunner,
    TrtexecEngineRunner,
    build_engine_api,
    find_builder,
    run_trtexec,
)
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.core.schema import dumps
from edgeprune.export.check import COMMON_OPS, Finding, Graph, errors_of
from edgeprune.export.fp16 import to_fp16
from edgeprune.export.manifest import (
    base_manifest,
    manifest_path,
    prepare_outputs,
    sha256_file,
    skipped,
)
from edgeprune.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    VerifiedOnnx,
    io_spec,
    onnx_manifest,
    verified_onnx,
)
from edgeprune.export.parity import Parity, check_parity, parity_inputs
from edgeprune.export.registry import Target, TargetOption, Tolerance, register

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


@dataclass(frozen=True, kw_only=True)
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

    opts.validate()
    job = _TrtExport(source=source, out=Path(out), opts=opts, req=req, progress=progress)
    mpath = prepare_outputs(job.out, TrtTarget.accepted_suffixes(), req.force, job.side_files())
    job.make_graphs()
    job.manifest = _manifest(job)
    builder = find_builder()
    with contextlib.ExitStack() as stack:  # every file appears together, or none
        job.step("writing the verified ONNX")
        onnx_tmp, fp16_tmp = job.write_graphs(stack)
        if builder is None:
            job.manifest["engine"] = {
                "status": "not_built",
                "reason": "neither the tensorrt Python module nor trtexec is available here",
            }
            job.manifest["parity"] = skipped("no TensorRT here: build the engine on the device")
        else:
            job.build(stack, builder, onnx_tmp, fp16_tmp)
        write_json_atomic(mpath, job.manifest)
    return job.manifest


@dataclass(kw_only=True)
class _TrtExport:
    """One ``export --target trt``: what was asked, and what it has made so far (the
    verified float32 graph, the FP16 graph, the manifest)."""

    source: Source
    out: Path
    opts: TrtOptions
    req: ExportRequest
    progress: Callable[[str], None] | None = None
    verified: VerifiedOnnx | None = None
    fp16: bytes | None = None  # the FP16 ONNX (``--precision fp16``)
    fp16_parity: Parity | None = None
    manifest: dict = field(default_factory=dict)

    def step(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    @property
    def batch(self) -> int:
        """The batch the graphs are traced and checked at (OPT with --dynamic-batch)."""
        dyn = self.opts.dynamic_batch
        return self.req.batch if dyn is None else dyn[1]

    @property
    def chw(self) -> tuple[int, int, int]:
        img = self.source.arch.img_size
        return (3, img, img)

    @property
    def onnx_path(self) -> Path:
        return self.out.with_suffix(".onnx")

    @property
    def fp16_path(self) -> Path:
        return self.out.with_suffix(".fp16.onnx")

    def graphs(self) -> tuple[Path, ...]:
        """The ONNX files kept beside the engine: the verified float32 graph, and the FP16
        one with ``--precision fp16``."""
        return (self.onnx_path,) + ((self.fp16_path,) if self.opts.precision == "fp16" else ())

    def side_files(self) -> tuple[Path, ...]:
        """The files written beside the engine, each graph with its own manifest (refused
        up front if they exist)."""
        return tuple(f for g in self.graphs() for f in (g, manifest_path(g)))

    def make_graphs(self) -> None:
        """The verified float32 ONNX (refused when TensorRT cannot build it) and, for
        fp16, its FP16 conversion checked in onnxruntime."""
        dynamic = self.opts.dynamic_batch is not None
        n = self.req.parity_inputs
        self.verified = verified_onnx(
            self.source,
            batch=self.batch,
            opset=self.req.opset,
            n_parity_inputs=n,
            dynamic_batch=dynamic,
            progress=self.step,
        )
        problems = errors_of(TrtTarget().graph_rules(Graph(self.verified.proto)))
        if problems:
            raise EdgepruneError(
                f"TensorRT cannot build this graph: {'; '.join(problems[:3])}", exit_code=1
            )
        if self.opts.precision == "fp16":
            self.step("converting the ONNX to FP16 (for TensorRT 11)")
            self.fp16 = to_fp16(self.verified.proto).SerializeToString()
            self.fp16_parity = check_parity(
                "the FP16 ONNX", self.source, self.fp16, batch=self.batch, n_inputs=n,
                tol=TOLERANCE["fp16"], hint="no file was written; try --precision fp32",
            )  # fmt: skip

    def write_graphs(self, stack: contextlib.ExitStack) -> tuple[Path, Path | None]:
        """The ONNX files and their manifests under temporary names (renamed when
        ``stack`` closes)."""
        onnx_tmp = self._write_graph(stack, self.onnx_path, self.verified.data, "onnx")
        if self.fp16 is None:
            return onnx_tmp, None
        return onnx_tmp, self._write_graph(stack, self.fp16_path, self.fp16, "onnx_fp16")

    def _write_graph(self, stack: contextlib.ExitStack, path: Path, data: bytes, key: str):
        """One kept graph with the ``onnx`` target's manifest under its own name, so that
        ``evaluate``, ``bench`` and ``check`` take it like any exported ONNX."""
        tmp = stack.enter_context(atomic_path(path))
        _write(tmp, data, self.manifest[key])
        batch = "batch" if self.opts.dynamic_batch is not None else self.batch
        man = onnx_manifest(self.source, path, self.verified, batch=batch, opset=self.req.opset)
        man["sha256"] = self.manifest[key]["sha256"]
        man["kept_by"] = {"target": "trt", "artifact": self.out.name}
        if key == "onnx_fp16":
            man["precision"] = "fp16"
            man["parity"] = self.fp16_parity.to_dict()
            man["ops"] = dict(Counter(n.op_type for n in Graph(onnx.load_from_string(data)).nodes))
        mtmp = stack.enter_context(atomic_path(manifest_path(path)))
        mtmp.write_text(dumps(man, str(manifest_path(path)), indent=2, sort_keys=False) + "\n")
        return tmp

    def build(self, stack: contextlib.ExitStack, builder, onnx_tmp: Path, fp16_tmp) -> None:
        """Build the engine (from the FP16 ONNX on TensorRT ≥ 11, else from the float32
        one) and check it against PyTorch."""
        man = self.manifest
        man["builder"] = builder.describe()
        from_fp16 = fp16_tmp is not None and builder.major >= 11
        tmp = stack.enter_context(atomic_path(self.out))
        self.step(f"building the engine ({builder.kind}, TensorRT {builder.version})")
        runner = _build(builder, fp16_tmp if from_fp16 else onnx_tmp, tmp, self.opts, self.chw)
        self.step("parity check (engine vs PyTorch)")
        man["parity"] = _engine_parity(
            self.source, runner, self.opts, self.batch, self.req.parity_inputs
        )
        man["engine"] = {
            "status": "verified" if man["parity"]["status"] == "passed" else "unverified",
            "built_from": (self.fp16_path if from_fp16 else self.onnx_path).name,
        }
        man["sha256"] = sha256_file(tmp)


def _manifest(job: _TrtExport) -> dict:
    """The manifest before the build: the graphs, their parity, the trtexec lines."""
    opts, out, dyn = job.opts, job.out, job.opts.dynamic_batch
    # file names only: the line is run on the device, in the folder holding these files
    name = Path(out.name)
    onnx_for_11 = job.fp16_path if job.fp16 is not None else job.onnx_path
    commands = {
        "tensorrt10": trtexec_command(Path(job.onnx_path.name), name, opts, job.chw, 10),
        "tensorrt11": trtexec_command(Path(onnx_for_11.name), name, opts, job.chw, 11),
    }
    manifest = base_manifest(job.source, "trt", out, job.batch, "tensorrt")
    manifest.update(
        {
            "precision": opts.precision,
            "workspace_mib": opts.workspace_mib,
            "dynamic_batch": list(dyn) if dyn else None,
            "timing_cache": str(opts.timing_cache) if opts.timing_cache else None,
            **io_spec(job.source, "batch" if dyn else job.batch),
            "onnx": {
                "file": job.onnx_path.name,
                "opset": job.req.opset,
                "ops": job.verified.ops(),
                "parity": job.verified.parity.to_dict(),
            },
            "trtexec_commands": {k: shlex.join(c) for k, c in commands.items()},
            "tolerance": TOLERANCE[opts.precision].to_dict(),
        }
    )
    if job.fp16 is not None:
        manifest["onnx_fp16"] = {"file": job.fp16_path.name, "parity": job.fp16_parity.to_dict()}
    return manifest


def _build(builder, onnx_file: Path, engine_tmp: Path, opts: TrtOptions, chw):
    """Build the engine into ``engine_tmp``; return a runner for it."""
    if builder.kind == "api":
        data = build_engine_api(
            onnx_file.read_bytes(),
            opts.precision,
            workspace_mib=opts.workspace_mib,
            input_name=INPUT_NAME,
            chw=chw,
            dynamic_batch=opts.dynamic_batch,
            timing_cache=opts.timing_cache,
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
    return check_parity(
        "the engine", source, runner, batch=batch, n_inputs=n, tol=TOLERANCE[opts.precision],
        runtime="tensorrt", hint="nothing was written",
    ).to_dict()  # fmt: skip


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
                detail = f"K={k} > {TOPK_MAX}"
                out.append(
                    Finding(severity="error", rule="TopK K too large", where=where, detail=detail)
                )
            if not next((a.i for a in node.attribute if a.name == "sorted"), 1):
                detail = "TensorRT needs sorted=1"
                out.append(
                    Finding(severity="error", rule="unsorted TopK", where=where, detail=detail)
                )
        return out

    def export(self, source: Source, req: ExportRequest, out: Path, progress=None) -> ExportResult:
        o = req.options
        opts = TrtOptions(
            precision=req.precision,
            workspace_mib=o["workspace_mib"],
            dynamic_batch=o["dynamic_batch"],
            timing_cache=o["timing_cache"],
        )
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
