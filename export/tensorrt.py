"""TensorRT target: verified ONNX → serialized ``.engine`` (+ parity), or, where no
TensorRT is installed, the verified ONNX plus the exact trtexec line for the device.

Outputs beside ``out`` (``m.engine``): ``m.onnx`` (the verified float32 graph),
``m.fp16.onnx`` (with ``--precision fp16``: the FP16 graph TensorRT 11 needs) and
``m.manifest.json`` (one manifest for the whole export, with the trtexec commands).
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from edgeprune.atomic import atomic_path, write_json_atomic
from edgeprune.errors import EdgepruneError, ParityError
from edgeprune.export.manifest import base_manifest, prepare_outputs, sha256_file, skipped
from edgeprune.export.onnx import (
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    compare,
    io_spec,
    verified_onnx,
)
from edgeprune.source import Source

PRECISIONS = ("fp32", "fp16")
# Tolerances against PyTorch fp32. fp32 engines may use TF32 on Ampere and newer
# (TensorRT's default), hence 1e-2 rather than the ONNX check's 1e-4. FP16 logits
# move by ~0.1 on DeiT-T (and a pruned model can keep a different token on a
# near-tie), so FP16 is judged by top-1 agreement ≥ 90 % and max |diff| ≤ 0.5.
TOLERANCE = {"fp32": (1e-2, 0.99), "fp16": (0.5, 0.9)}


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
    source: Source,
    out: Path,
    opts: TrtOptions,
    batch: int = 1,
    opset: int = MIN_OPSET,
    force: bool = False,
    n_parity_inputs: int = 16,
    progress=None,
) -> dict:
    """Build and check an engine; returns the manifest. ``manifest["engine"]["status"]``
    is ``"verified"``, ``"unverified"`` (built, parity could not run) or
    ``"not_built"`` (no TensorRT here: the ONNX and the commands are kept)."""
    from edgeprune.runtimes.trt_engine import find_builder

    out = Path(out)
    opts.validate()
    onnx_path = out.with_suffix(".onnx")
    fp16_path = out.with_suffix(".fp16.onnx")
    side = (onnx_path,) + ((fp16_path,) if opts.precision == "fp16" else ())
    mpath = prepare_outputs(out, (".engine", ".plan", ".trt"), force, side)
    step = progress or (lambda _msg: None)
    dyn = opts.dynamic_batch
    if dyn is not None:
        batch = dyn[1]
    v = verified_onnx(
        source, batch, opset, n_parity_inputs, dynamic_batch=dyn is not None, progress=step
    )
    img = source.arch.img_size
    chw = (3, img, img)

    fp16_bytes = None
    fp16_parity = None
    if opts.precision == "fp16":
        from edgeprune.export.fp16 import to_fp16
        from edgeprune.runtimes.onnxruntime import make_session, run

        step("converting the ONNX to FP16 (for TensorRT 11)")
        fp16_bytes = to_fp16(v.proto).SerializeToString()
        sess = make_session(fp16_bytes)
        atol, min_top1 = TOLERANCE["fp16"]
        fp16_parity = compare(
            source.model(), lambda x: run(sess, x), batch, img, n_parity_inputs, atol, min_top1
        )
        if not fp16_parity.ok:
            raise ParityError(
                f"the FP16 ONNX differs from PyTorch: max |diff| "
                f"{fp16_parity.max_abs_diff:.3g}, top-1 {fp16_parity.top1_agreement:.0%}",
                "no file was written; try --precision fp32",
                exit_code=1,
            )

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
            "tolerance": {
                "atol": TOLERANCE[opts.precision][0],
                "min_top1_agreement": TOLERANCE[opts.precision][1],
            },
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
        if status == "failed":
            p = manifest["parity"]
            raise ParityError(
                f"the engine differs from PyTorch: max |diff| {p['max_abs_diff']:.3g} "
                f"(limit {p['atol']:g}), top-1 agreement {p['top1_agreement']:.0%}",
                "nothing was written",
                exit_code=1,
            )
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
        from edgeprune.runtimes.trt_engine import ApiRunner, build_engine_api

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
    from edgeprune.runtimes.trt_engine import TrtexecEngineRunner, run_trtexec

    cmd = trtexec_command(onnx_file, engine_tmp, opts, chw, builder.major, builder.path)
    run_trtexec(cmd, "building the engine")
    if engine_tmp.stat().st_size == 0:
        raise EdgepruneError("trtexec reported success but wrote no engine", exit_code=1)
    return TrtexecEngineRunner(
        builder.path, engine_tmp, INPUT_NAME, OUTPUT_NAME, opts.dynamic_batch is not None
    )


def _engine_parity(source: Source, runner, opts: TrtOptions, batch: int, n: int) -> dict:
    atol, min_top1 = TOLERANCE[opts.precision]
    first = runner(next(iter(_one(batch, source.arch.img_size))).numpy())
    if first is None:
        return skipped("this trtexec wrote no --exportOutput file; the engine was not run")
    p = compare(
        source.model(), runner, batch, source.arch.img_size, n, atol, min_top1, runtime="tensorrt"
    )
    return p.to_dict()


def _one(batch: int, img: int):
    from edgeprune.export.onnx import parity_inputs

    return parity_inputs(batch, img, 1, seed=99)


def _write(tmp: Path, data: bytes, record: dict) -> None:
    tmp.write_bytes(data)
    record["sha256"] = sha256_file(tmp)
