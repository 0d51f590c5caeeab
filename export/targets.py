"""``edgeprune export``: the target registry and the one dispatch.

Every target is one module under ``export/`` that defines a ``Target`` subclass
(``export/registry.py``) and registers it with ``@register``. To add a target, write
its module and add its name to ``TARGET_MODULES`` below: nothing else changes.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from edgeprune.core.atomic import output_lock
from edgeprune.core.errors import EdgepruneError
from edgeprune.export import fallbacks
from edgeprune.export.check import Finding, check_graph
from edgeprune.export.manifest import read_manifest, verify_artifact
from edgeprune.export.registry import (
    TARGETS,
    ExportRequest,
    ExportResult,
    Target,
    parse_options,
    refuse_foreign_options,
)

if TYPE_CHECKING:
    from edgeprune.core.source import Source

# the registry line: the modules under export/ that register a target, in --target order
TARGET_MODULES = ("onnx", "ort", "tensorrt", "coreml", "executorch")

__all__ = ["ExportRequest", "ExportResult", "check_file", "export_source", "get_target", "validate"]


def load_targets() -> dict[str, Target]:
    """Every registered target by name (importing the target modules on first use)."""
    for module in TARGET_MODULES:
        importlib.import_module(f"edgeprune.export.{module}")
    return TARGETS


def get_target(name: str) -> Target:
    targets = load_targets()
    if name not in targets:
        raise EdgepruneError(f"unknown target '{name}'", f"expected: {', '.join(targets)}")
    return targets[name]


def request_from(values: dict[str, Any], **overrides: Any) -> ExportRequest:
    """An ExportRequest from named values (the CLI's parameters): the ExportRequest
    fields by name, and every registered target's options (``TargetOption.name``) into
    ``options``; other names are ignored. ``overrides`` win over ``values``."""
    values = {**values, **overrides}
    common = {f.name: values[f.name] for f in fields(ExportRequest) if f.name in values}
    common.pop("options", None)
    names = {o.name for t in load_targets().values() for o in t.options}
    return ExportRequest(**common, options={n: values[n] for n in names if n in values})


def validate(req: ExportRequest) -> ExportRequest:
    """Check the target and option combination before any work (one line, exit 2);
    returns the request with its precision resolved and its target options parsed."""
    if req.checked:
        return req
    target = get_target(req.target)
    refuse_foreign_options(target, req)
    precision = req.precision or target.default_precision
    if precision not in target.precisions:
        raise EdgepruneError(
            f"--precision {precision} is not supported with --target {req.target}",
            target.precision_hint(precision),
        )
    if req.parity_inputs < 1:
        raise EdgepruneError(f"--parity-inputs {req.parity_inputs} must be at least 1")
    if req.batch < 1:
        raise EdgepruneError(f"--batch {req.batch} is not a positive batch size")
    return parse_options(target, replace(req, precision=precision))


def checkable_target(name: str) -> Target:
    """A target ``edgeprune check --target`` offers (one line when it is not one)."""
    targets = {n: t for n, t in load_targets().items() if t.checkable}
    if name not in targets:
        raise EdgepruneError(f"unknown target '{name}'", f"expected one of: {', '.join(targets)}")
    return targets[name]


def check_onnx(proto, target: str) -> list[Finding]:
    """``edgeprune check``'s findings for an ONNX ModelProto on ``target`` (by name)."""
    return check_graph(proto, checkable_target(target))


def check_file(path: Path, target: str, verify_hash: bool = True) -> list[Finding]:
    """``edgeprune check``: what in the ONNX file ``path`` ``target`` rejects or runs slowly,
    and the ops its manifest names as run outside the delegate or provider it was exported
    for (``fallback`` findings); any other artifact is judged by its manifest's fallbacks
    alone. Its sha256 is checked against its manifest first, unless ``verify_hash`` is
    False."""

    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"{path} does not exist")
    onnx_file = path.suffix.lower() == ".onnx"
    rules = checkable_target(target) if onnx_file else None
    verify_artifact(path, verify_hash)
    found = read_manifest(path)
    recorded = found[1].fallbacks if found else None
    named = fallbacks.findings(recorded.model_dump() if recorded else None)
    if not onnx_file:
        if found is None:
            raise EdgepruneError(
                f"{path} is not an ONNX graph and has no manifest to check",
                "check reads ONNX graphs, or the fallbacks an artifact's manifest names",
            )
        return named
    if not path.is_file():
        raise EdgepruneError(f"{path} is not a file")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001  (protobuf raises various errors)
        raise EdgepruneError(f"{path} is not an ONNX model ({type(e).__name__})") from None
    return check_graph(proto, rules) + named


def default_out(name: str, target: str) -> Path:
    return Path(name + get_target(target).suffix)


def export_source(
    source: Source, req: ExportRequest, name: str = "model", progress=None
) -> ExportResult:
    """Export ``source`` as ``req`` asks (to ``req.out``, else ``<name><suffix>``), under a
    lock on the output: two runs writing the same output never interleave; the second
    fails cleanly (each exporter re-checks ``--force`` under the lock)."""

    req = validate(req)
    target = get_target(req.target)
    out = Path(req.out) if req.out is not None else default_out(name, req.target)
    parent = out.parent if str(out.parent) else Path(".")
    if not (parent.is_dir() and os.access(parent, os.W_OK)):
        return target.export(source, req, out, progress)  # the exporter reports the bad --out
    with output_lock(out):
        return target.export(source, req, out, progress)
