"""CoreML target: ``torch.export`` → coremltools ML Program, saved as ``.mlpackage``
(a directory, built in a temp dir and renamed into place).

Conversion runs anywhere coremltools does; prediction only on macOS, so parity runs
there and is recorded as skipped elsewhere — never as passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from edgeprune.atomic import (
    atomic_dir,
    write_json_atomic,
)
from edgeprune.errors import EdgepruneError, ParityError
from edgeprune.export.manifest import base_manifest, prepare_outputs, sha256_tree, skipped
from edgeprune.export.onnx import INPUT_NAME, OUTPUT_NAME, compare, io_spec
from edgeprune.source import Source

PRECISIONS = ("fp16", "fp32")
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_and_ne": "CPU_AND_NE",
}
# ML Programs need iOS 15 / macOS 12 or newer
MIN_TARGETS = {
    "ios15": "iOS15",
    "ios16": "iOS16",
    "ios17": "iOS17",
    "ios18": "iOS18",
    "macos12": "macOS12",
    "macos13": "macOS13",
    "macos14": "macOS14",
    "macos15": "macOS15",
}
TOLERANCE = {"fp32": (1e-3, 1.0), "fp16": (0.5, 0.9)}  # same reasoning as TensorRT's


def validate(precision: str, min_target: str, compute_units: str) -> None:
    if precision not in PRECISIONS:
        raise EdgepruneError(
            f"--precision {precision} is not supported for --target coreml",
            "use fp16 (default) or fp32; int8 weight compression is not supported yet",
        )
    if min_target not in MIN_TARGETS:
        raise EdgepruneError(
            f"--min-target {min_target} is not an ML Program target",
            f"expected one of: {', '.join(MIN_TARGETS)}",
        )
    if compute_units not in COMPUTE_UNITS:
        raise EdgepruneError(
            f"--compute-units {compute_units} is unknown",
            f"expected one of: {', '.join(COMPUTE_UNITS)}",
        )


def convert(
    model: torch.nn.Module,
    batch: int,
    img: int,
    precision: str = "fp16",
    min_target: str = "ios17",
    compute_units: str = "all",
):
    """The ``ct.models.MLModel`` (not loaded for prediction off macOS)."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)  # before the import: it warns
    import coremltools as ct

    dummy = torch.zeros(batch, 3, img, img)
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(sink),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        try:
            ep = _drop_aliases(torch.export.export(model, (dummy,)).run_decompositions({}))
        except Exception as e:  # noqa: BLE001  (torch.export raises many kinds)
            raise EdgepruneError(
                f"torch.export failed: {' '.join(str(e).split())[:200]}", exit_code=1
            ) from e
        return ct.convert(
            ep,
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, MIN_TARGETS[min_target]),
            compute_precision=(
                ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
            ),
            compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units]),
            inputs=[ct.TensorType(name=INPUT_NAME, shape=dummy.shape, dtype=np.float32)],
            outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            skip_model_load=sys.platform != "darwin",
        )


def add_metadata(mlmodel, source: Source) -> None:
    d = source.describe()
    mlmodel.short_description = (
        f"{source.arch.name} {source.method.name} static top-k ViT (edgeprune); "
        f"input: {INPUT_NAME} float32 NCHW, output: {OUTPUT_NAME}"
    )
    mlmodel.author = "edgeprune"
    meta = mlmodel.user_defined_metadata
    meta["edgeprune.source"] = d["source"]
    meta["edgeprune.method"] = d["method"]
    meta["edgeprune.prune_locs"] = json.dumps(d["prune_locs"])
    meta["edgeprune.keep_ratios"] = json.dumps(d["keep_ratios"])
    meta["edgeprune.random_weights"] = json.dumps(d["random_weights"])
    meta["edgeprune.token_plan"] = json.dumps(source.plan.to_dict())


def export_coreml(
    source: Source,
    out: Path,
    batch: int = 1,
    precision: str = "fp16",
    min_target: str = "ios17",
    compute_units: str = "all",
    force: bool = False,
    n_parity_inputs: int = 16,
    progress=None,
) -> dict:
    out = Path(out)
    validate(precision, min_target, compute_units)
    if batch < 1:
        raise EdgepruneError(f"--batch {batch} is not a positive batch size")
    mpath = prepare_outputs(out, (".mlpackage",), force, directory=True)
    step = progress or (lambda _msg: None)
    img = source.arch.img_size
    step("converting (torch.export → coremltools ML Program)")
    mlmodel = convert(source.model(), batch, img, precision, min_target, compute_units)
    add_metadata(mlmodel, source)
    if sys.platform == "darwin":
        step(f"parity check ({n_parity_inputs} inputs, CoreML)")
        atol, min_top1 = TOLERANCE[precision]

        def run(x: np.ndarray) -> np.ndarray:
            return mlmodel.predict({INPUT_NAME: x})[OUTPUT_NAME]

        p = compare(
            source.model(),
            run,
            batch,
            img,
            n_parity_inputs,
            atol,
            min_top1,
            runtime=f"coreml ({compute_units})",
        )
        if not p.ok:
            raise ParityError(
                f"the CoreML model differs from PyTorch: max |diff| {p.max_abs_diff:.3g}, "
                f"top-1 agreement {p.top1_agreement:.0%}",
                "nothing was written",
                exit_code=1,
            )
        parity = p.to_dict()
    else:
        parity = skipped("needs macOS")
    manifest = base_manifest(source, "coreml", out, batch, "coremltools")
    manifest.update(
        {
            "format": "mlprogram",
            "precision": precision,
            "minimum_deployment_target": MIN_TARGETS[min_target],
            "compute_units": compute_units,
            **io_spec(source, batch),
            "tolerance": {
                "atol": TOLERANCE[precision][0],
                "min_top1_agreement": TOLERANCE[precision][1],
            },
            "parity": parity,
        }
    )
    with atomic_dir(out) as tmp:
        pkg = tmp / "model.mlpackage"
        step("saving the .mlpackage")
        mlmodel.save(str(pkg))
        manifest["sha256"] = sha256_tree(pkg)
        # the package becomes the directory itself: move its contents up one level
        for child in pkg.iterdir():
            child.rename(tmp / child.name)
        pkg.rmdir()
        write_json_atomic(mpath, manifest)
    return manifest


def _drop_aliases(ep):
    """Remove ``aten.alias`` nodes (identity views that coremltools cannot convert),
    wiring their users to the aliased tensor."""
    import torch

    aliases = {torch.ops.aten.alias.default}
    if hasattr(torch.ops.aten, "alias_copy"):
        aliases.add(torch.ops.aten.alias_copy.default)
    g = ep.graph_module.graph
    for node in list(g.nodes):
        if node.op == "call_function" and node.target in aliases:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
    ep.graph_module.recompile()
    return ep
