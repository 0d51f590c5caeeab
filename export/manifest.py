"""The manifest written beside every artifact: what it is, where it came from, and how
well it matches PyTorch."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
from importlib import metadata
from pathlib import Path

from edgeprune.core.atomic import (
    atomic_path,
    check_writable_dir_target,
    check_writable_target,
    write_json_atomic,
)
from edgeprune.core.errors import EdgepruneError

MANIFEST_VERSION = 1


def manifest_path(artifact: Path) -> Path:
    """``<artifact name>.manifest.json`` beside it (``m.onnx.manifest.json``,
    ``m.engine.manifest.json``…): one manifest per artifact, so one model exported to
    every target in one folder keeps every manifest."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")


def prepare_outputs(
    out: Path,
    suffixes: tuple[str, ...],
    force: bool,
    side_files: tuple[Path, ...] = (),
    directory: bool = False,
) -> Path:
    """Every exporter's first step: ``out`` has the target's suffix, and it, its manifest
    and any side files may be written (absent, or ``force``). Returns the manifest path.

    ``directory``: ``out`` is a bundle directory (an .mlpackage), checked as one."""

    out = Path(out)
    if out.suffix not in suffixes:
        raise EdgepruneError(f"--out {out} should end in {suffixes[0]}")
    mpath = manifest_path(out)
    (check_writable_dir_target if directory else check_writable_target)(out, force)
    for p in (mpath, *side_files):
        check_writable_target(p, force)
    return mpath


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(*extra: str) -> dict[str, str]:
    names = ("edgeprune", "torch", "onnx", "onnxruntime", "onnxsim", *extra)
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def sha256_tree(path: Path) -> str:
    """A digest of a directory artifact: relative names and contents, in sorted order."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def base_manifest(source, target: str, artifact: Path, batch: int, *extra_versions: str) -> dict:
    """The fields every target's manifest starts with (target-specific ones are added)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "target": target,
        "artifact": Path(artifact).name,
        "created": now_utc(),
        "spec": source.describe(),
        "token_plan": source.plan.to_dict(),
        "gflops": source.flops().to_dict(),
        "batch": batch,
        "versions": versions(*extra_versions),
        "notes": list(source.notes),
        "method_report": source.method.report(source.config),
    }


def write_file_artifact(out: Path, data: bytes, manifest: dict, mpath: Path) -> dict:
    """Write ``data`` to ``out`` and the manifest (with the file's sha256) beside it, each
    under a temporary name renamed into place; returns the manifest."""

    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        manifest["sha256"] = sha256_file(tmp)
        write_json_atomic(mpath, manifest)
    return manifest


def skipped(reason: str) -> dict:
    """A parity entry for a check that could not run here: never a silent pass."""
    return {"status": "skipped", "reason": reason}
