"""The manifest written beside every artifact: what it is, where it came from, and how
well it matches PyTorch."""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import platform
from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from edgeprune.core.atomic import (
    Output,
    atomic_path,
    check_outputs,
    sha256_file,
    write_json_atomic,
)
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.schema import Finite, Positive, Strict, Tokens, load_json, validate

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
    outputs = {"--out": Output(out, folder=directory), "its manifest": mpath}
    outputs.update({f"the file {p.name} beside --out": p for p in side_files})
    check_outputs(outputs, force=force)
    return mpath


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
        # the budget and device a fine-tuned checkpoint was trained for (its record)
        "trained_for": getattr(source, "trained_for", None),
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


# ---- reading: a manifest's fields checked before any is used -----------------------------
#: a keep ratio as a manifest records it
Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
#: a dimension of the architecture (embed dim, heads, depth, sizes, classes)
Dim = Annotated[int, Field(ge=1, le=1_000_000)]
#: a name or a path as recorded
Text = Annotated[str, Field(max_length=4096)]


class ArchRecord(Strict):
    """``spec.arch``: the architecture the artifact was exported from."""

    name: Annotated[str, Field(max_length=200)]
    embed_dim: Dim
    num_heads: Dim
    depth: Dim
    patch_size: Dim
    img_size: Dim
    mlp_ratio: Positive
    num_classes: Dim
    in_chans: Dim = 3

    def dims(self) -> dict:
        """Everything but the name: what makes two architectures the same network."""
        return self.model_dump(exclude={"name"})


class OptionsRecord(Strict):
    """``spec.options``: the method options a user sets (others are kept, not read)."""

    r: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    calibration: Text | None = None
    gate_scale: Finite | None = None
    gate_center: Finite | None = None


class SpecRecord(Strict):
    """``spec``: where the artifact came from (``Source.describe``)."""

    source: Annotated[str, Field(min_length=1, max_length=4096)]
    kind: Literal["builtin", "checkpoint"]
    method: Annotated[str, Field(min_length=1, max_length=100)] = "dense"
    prune_locs: list[Annotated[int, Field(ge=0, le=100_000)]] = []
    keep_ratios: list[Ratio] = []
    options: OptionsRecord = OptionsRecord()
    arch: ArchRecord | None = None


class PlanRecord(Strict):
    """``token_plan``: the tokens each block runs on."""

    tokens_per_block: list[Tokens] | None = None


class FallbacksRecord(Strict):
    """The manifest's ``fallbacks`` (export/fallbacks.py): ops outside the delegate or
    provider the artifact was exported for."""

    requested: Annotated[str, Field(max_length=200)]
    checked: bool
    ops: dict[Annotated[str, Field(max_length=200)], Annotated[int, Field(ge=0, le=10**7)]]


class ManifestFile(Strict):
    """``<artifact>.manifest.json`` as read back: the fields edgeprune uses are typed
    and bounded; the rest (versions, parity, notes…) is kept unread."""

    manifest_version: Annotated[int, Field(ge=1, le=MANIFEST_VERSION)] | None = None
    target: Annotated[str, Field(max_length=100)] | None = None
    artifact: Text | None = None
    spec: SpecRecord | None = None
    token_plan: PlanRecord | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    fallbacks: FallbacksRecord | None = None


MANIFEST_HINT = "re-export the artifact, or pass --reference SRC"


def read_manifest(artifact: Path) -> tuple[Path, ManifestFile] | None:
    """The manifest written beside ``artifact``, validated: ``<artifact>.manifest.json``
    (one per artifact), else the older ``<stem>.manifest.json`` when it names this
    artifact (a stem-named one may belong to another artifact of the same stem). None
    when there is none; one line when it is not JSON or a field is wrong."""
    artifact = Path(artifact)
    for p in (manifest_path(artifact), artifact.with_name(artifact.stem + ".manifest.json")):
        if not p.is_file():
            continue
        data = load_json(p, f"manifest {p} is not valid JSON", MANIFEST_HINT)
        if isinstance(data, dict) and data.get("artifact") not in (None, artifact.name):
            continue
        return p, validate(ManifestFile, data, f"manifest {p} is not valid", MANIFEST_HINT)
    return None


# ---- before use: the artifact is the one its manifest describes ----------------------------
NO_VERIFY_HINT = "re-export it, or pass --no-verify-hash to use it anyway"


def verify_artifact(artifact: Path, check: bool = True) -> str:
    """Check ``artifact`` (a file, or a folder such as an .mlpackage) against the sha256
    its manifest records, before it is used (evaluate, bench, check). Returns
    ``"verified"``; ``"not recorded"`` when no manifest records one (none beside it, or an
    engine its export did not build); ``"not checked"`` when ``check`` is False
    (``--no-verify-hash``: the caller says so in its output). A different file, or a
    manifest that cannot be read: one line naming the artifact and both hashes."""
    artifact = Path(artifact)
    if not check:
        return "not checked"
    try:
        found = read_manifest(artifact)
    except EdgepruneError as e:
        message = f"{e.message}, so {artifact} cannot be checked"
        raise EdgepruneError(message, NO_VERIFY_HINT) from None
    if found is None or found[1].sha256 is None:
        return "not recorded"
    mpath, want = found[0], found[1].sha256
    got = sha256_tree(artifact)
    if not hmac.compare_digest(got, want):
        raise EdgepruneError(
            f"{artifact} is not the artifact its manifest {mpath.name} describes: its sha256 "
            f"is {got[:12]}…, the manifest records {want[:12]}…",
            NO_VERIFY_HINT,
        )
    return "verified"


def hash_note(artifact: Path, status: str) -> str | None:
    """The line an output carries for ``verify_artifact``'s answer (None: nothing to say)."""
    if status == "not checked":
        name = Path(artifact).name
        return f"the sha256 of {name} was not checked against its manifest (--no-verify-hash)"
    return None
