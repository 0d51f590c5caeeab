"""``edgeprune evaluate``: run a model over an image folder and compare it with references.

The model is either a SRC (the static PyTorch graph of a checkpoint or built-in spec)
or an exported artifact, run through its runtime's runner (``get_runner``; ``.onnx``
and ``.ort`` in onnxruntime, ``.engine`` in TensorRT, ``.mlpackage`` in CoreML,
``.pte`` in ExecuTorch, or ``--runtime``). Images go through the DeiT preprocessing
(``edgeprune.core.images``).

Reported:

* ``top1`` / ``top5`` (%) when the folder is ImageNet-style (class sub-folders);
* per reference: ``top1_agreement`` (% of images whose top-1 class equals the
  reference's), ``kl`` (mean over images of KL(p_ref ‖ p_model) in nats, softmax of
  the logits) and ``max_logit_diff`` (max |logit − reference logit| over all images and
  classes).

References: ``--reference SRC`` if given; for an artifact, otherwise the PyTorch model
of the source its manifest records (``<artifact>.manifest.json``, or the older
``<stem>.manifest.json``); and for a pruned model, also its **dense backbone** (the same
weights with no token pruning). A PyTorch SRC is not compared with itself.

Under ``torchrun`` each process runs its share of the images (``files[rank::size]``)
and the answers are gathered to every process in the folder's order, so the report is
the one process's (``core.distributed.gather_rows``); the CLI prints on rank 0 alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeprune.core import distributed
from edgeprune.core.backends.runner import get_runner
from edgeprune.core.distributed import World
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import ImageSet, Preprocess, batches, preprocess_for, scan
from edgeprune.core.methods import get_method
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.core.source import Source, resolve
from edgeprune.export.manifest import ManifestFile, hash_note, read_manifest, verify_artifact

ARTIFACT_RUNTIMES = {
    ".onnx": "onnxruntime",
    ".ort": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".mlpackage": "coreml",
    ".pte": "executorch",
}


# ---- models ---------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run PyTorch on ``n`` intra-op threads inside the block (None: leave it)."""
    if n is not None and n < 1:
        raise EdgepruneError(f"--threads {n} must be at least 1")
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Predictor:
    """Something that turns a batch of images into logits (numpy float32, B×classes)."""

    name: str
    what: str = ""  # a longer description
    batch: int | None = None  # a fixed batch size (static artifacts), None for any

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


class TorchPredictor(Predictor):
    def __init__(self, name: str, module: torch.nn.Module, what: str = ""):
        self.name, self.module, self.what = name, module.eval(), what or name

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.module(x).float().numpy()


class RunnerPredictor(Predictor):
    """An artifact through its runner; batches are padded to the graph's static batch."""

    def __init__(self, name: str, runner):
        self.name, self.runner, self.what = name, runner, name
        shapes = runner.input_shapes()
        if len(shapes) != 1:
            raise EdgepruneError(f"{name} has {len(shapes)} inputs; expected one image input")
        self.input_name, shape = next(iter(shapes.items()))
        if len(shape) != 4:
            raise EdgepruneError(f"{name} takes a {len(shape)}-d input, not B×3×H×W")
        self.batch, self.image_shape = int(shape[0]), tuple(int(d) for d in shape[1:])

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        if tuple(x.shape[1:]) != self.image_shape:
            raise EdgepruneError(
                f"{self.name} takes images {list(self.image_shape)}, got {list(x.shape[1:])}"
            )
        out = []
        for i in range(0, x.shape[0], self.batch):
            chunk = x[i : i + self.batch].numpy().astype(np.float32)
            n = chunk.shape[0]
            if n < self.batch:  # pad with copies of the last image, drop their outputs
                pad = np.repeat(chunk[-1:], self.batch - n, axis=0)
                chunk = np.concatenate([chunk, pad])
            logits = self.runner.run({self.input_name: chunk})[0]
            out.append(np.asarray(logits, dtype=np.float32).reshape(self.batch, -1)[:n])
        return np.concatenate(out)


def is_artifact(text: str) -> bool:
    return Path(text).suffix.lower() in ARTIFACT_RUNTIMES


def manifest_of(artifact: Path) -> tuple[Path, ManifestFile] | None:
    """The manifest written beside ``artifact``, its fields checked
    (``export.manifest.read_manifest``). None when there is none."""
    return read_manifest(Path(artifact))


def source_from_manifest(artifact: Path, heads: int | None = None) -> Source:
    """The SRC an artifact was exported from, as its manifest records it (spec and
    token plan). A checkpoint path is looked up as written, then beside the manifest."""
    found = manifest_of(artifact)
    if found is None:
        raise EdgepruneError(
            f"{artifact} has no manifest beside it, so its source is unknown",
            "pass --reference SRC",
        )
    mpath, man = found
    spec = man.spec
    if spec is None:
        raise EdgepruneError(f"manifest {mpath} records no source", "pass --reference SRC")
    text = spec.source
    if spec.kind == "checkpoint" and not Path(text).exists():
        beside = mpath.parent / text
        if not beside.exists():
            raise EdgepruneError(
                f"the source of {artifact}, {text}, is not here", "pass --reference SRC"
            )
        text = str(beside)

    method = get_method(spec.method)
    recorded = spec.options.model_dump(exclude_none=True)
    opts = {k: v for k, v in recorded.items() if k in method.user_options}
    keep = tuple(spec.keep_ratios) or None
    locs = tuple(spec.prune_locs) or None
    try:
        src = resolve(
            text, method=method.name, keep=keep, locs=locs, heads=heads, method_options=opts
        )
    except EdgepruneError:
        src = resolve(text, method=method.name, heads=heads, method_options=opts)
    want = man.token_plan.tokens_per_block if man.token_plan is not None else None
    if want is not None and list(src.plan.attn_tokens) != list(want):
        raise EdgepruneError(
            f"the source {text} recorded in {mpath.name} no longer gives the artifact's token plan",
            "pass --reference SRC",
        )
    return src


def check_reference_arch(artifact: Path, ref: Source, reference: str, notes: list[str]) -> None:
    """``--reference`` for an artifact must be the same network as the artifact (as its
    manifest records): a DeiT-S reference for a DeiT-T artifact compares nothing. Where
    no manifest records it, a note says it was not checked."""
    found = manifest_of(artifact)
    arch = found[1].spec.arch if found is not None and found[1].spec is not None else None
    if arch is None:
        notes.append(
            f"no manifest beside {Path(artifact).name} records its architecture: "
            f"--reference {reference} was not checked against it"
        )
        return
    if arch.dims() != {k: v for k, v in ref.arch.to_dict().items() if k != "name"}:
        raise EdgepruneError(
            f"--reference {reference} is a {ref.arch.name}, but {Path(artifact).name} was "
            f"exported from a {arch.name} ({found[0].name})",
            "give the reference it was exported from (or a model of the same architecture)",
        )


def dense_backbone(source: Source) -> torch.nn.Module:
    """The pruned model's backbone with no token pruning: a dense DeiT with the same
    weights (the selectors' parameters left out)."""

    dense = VisionTransformer(source.arch)
    sd = source.model().state_dict()
    dense.load_state_dict({k: v for k, v in sd.items() if k in dense.state_dict()})
    return dense.eval()


def load_artifact(path: Path, runtime: str | None, threads: int | None) -> Predictor:
    if not path.exists():
        raise EdgepruneError(f"artifact {path} does not exist")
    rt = runtime or ARTIFACT_RUNTIMES.get(path.suffix.lower())
    if rt is None:
        raise EdgepruneError(f"cannot tell the runtime of {path}", "pass --runtime")
    runner = get_runner(rt, threads=threads)
    runner.load(path)
    return RunnerPredictor(f"{path.name} ({rt})", runner)


# ---- metrics --------------------------------------------------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def compare_logits(model: np.ndarray, ref: np.ndarray) -> dict:
    """Agreement of ``model`` with ``ref`` (both N×classes)."""
    lp, lq = _log_softmax(ref), _log_softmax(model)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return {
        "top1_agreement": float(100.0 * (model.argmax(1) == ref.argmax(1)).mean()),
        "kl": float(kl.mean()),
        "max_logit_diff": float(np.abs(model - ref).max()),
    }


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(100.0 * (top == labels[:, None]).any(axis=1).mean())


@dataclass(kw_only=True)
class EvalReport:
    """What ``evaluate`` found: the model's logits on the images read, its references'."""

    model: str
    images: ImageSet
    preprocess: Preprocess
    logits: np.ndarray  # N×classes, the images that could be read
    read: list[int]  # their positions in ``images.files``
    skipped: list[Path]
    references: dict[str, np.ndarray] = field(default_factory=dict)
    reference_names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def predictions(self) -> list[int]:
        """Top-1 class per image read, in order."""
        return [int(c) for c in self.logits.argmax(1)]

    @property
    def labels(self) -> np.ndarray | None:
        if self.images.labels is None:
            return None
        return np.array([self.images.labels[i] for i in self.read], dtype=np.int64)

    def accuracy(self, logits: np.ndarray) -> dict | None:
        y = self.labels
        if y is None:
            return None
        return {"top1": topk_accuracy(logits, y, 1), "top5": topk_accuracy(logits, y, 5)}

    def to_dict(self) -> dict:
        refs = {}
        for name, ref in self.references.items():
            refs[name] = {
                "what": self.reference_names.get(name, name),
                **compare_logits(self.logits, ref),
                "accuracy": self.accuracy(ref),
            }
        return {
            "model": self.model,
            **self.images.describe(),
            "images_read": len(self.read),
            "skipped_unreadable": len(self.skipped),
            "skipped_files": [str(p) for p in self.skipped[:20]],
            "preprocess": self.preprocess.to_dict(),
            "accuracy": self.accuracy(self.logits),
            "references": refs,
            "notes": self.notes,
        }


# ---- the evaluation -------------------------------------------------------------------
@dataclass(kw_only=True)
class EvalRequest:
    """What ``edgeprune evaluate`` runs: the model, its image folder and references."""

    model: str  # SRC or an artifact path
    images: Path
    reference: str | None = None
    limit: int | None = None
    batch: int = 16
    runtime: str | None = None
    threads: int | None = None
    heads: int | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dense_reference: bool = True
    method: str | None = None  # overrides for a SRC (as every command's --method/--keep/--locs)
    keep: tuple[float, ...] | str | None = None
    locs: tuple[int, ...] | str | None = None
    verify_hash: bool = True  # an artifact's sha256 checked against its manifest first


def build_predictors(req: EvalRequest) -> tuple[Predictor, list[Predictor], Source, list[str]]:
    """The model under test, its references, the source that fixes the arch, notes."""
    notes: list[str] = []
    refs: list[Predictor] = []
    ref_src = None
    if req.reference is not None:
        ref_src = resolve(req.reference, heads=req.heads)
    if is_artifact(req.model):
        if (req.method, req.keep, req.locs) != (None, None, None):
            raise EdgepruneError(
                "--method/--keep/--locs apply to a SRC, not to an exported artifact",
                "an artifact's schedule is fixed; give --reference SRC to compare with another",
            )
        if not Path(req.model).exists():
            raise EdgepruneError(f"artifact {req.model} does not exist")
        hashed = verify_artifact(Path(req.model), req.verify_hash)
        if (unchecked := hash_note(Path(req.model), hashed)) is not None:
            notes.append(unchecked)
        if ref_src is not None:
            check_reference_arch(Path(req.model), ref_src, req.reference, notes)
        src = ref_src if ref_src is not None else source_from_manifest(Path(req.model), req.heads)
        model = load_artifact(Path(req.model), req.runtime, req.threads)
        key = "source" if ref_src is None else "reference"
        refs.append(TorchPredictor(key, src.model(), f"{src.text} in PyTorch"))
    else:
        if req.runtime is not None:
            raise EdgepruneError("--runtime applies to an exported artifact, not a SRC")
        src = resolve(req.model, req.method, req.keep, req.locs, heads=req.heads)
        model = TorchPredictor(f"{src.text} (PyTorch)", src.model())
        if ref_src is not None:
            refs.append(TorchPredictor("reference", ref_src.model(), f"{ref_src.text} in PyTorch"))
    if ref_src is not None and ref_src.arch.to_dict() != src.arch.to_dict():
        raise EdgepruneError(
            f"--reference {req.reference} is a {ref_src.arch.name}, the model a {src.arch.name}"
        )
    notes += src.notes
    if req.dense_reference and src.method.name != "dense":
        refs.append(TorchPredictor("dense", dense_backbone(src), f"dense backbone of {src.text}"))
    if not refs:
        notes.append("no reference: a dense PyTorch model with no --reference is its own")
    return model, refs, src, notes


def evaluate(req: EvalRequest, progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Run the model and its references over the folder (see the module docstring)."""
    if req.limit is not None and req.limit < 1:
        raise EdgepruneError(f"--limit {req.limit} must be at least 1")
    if req.batch < 1:
        raise EdgepruneError(f"--batch {req.batch} must be at least 1")
    with torch_threads(req.threads):
        return _evaluate(req, progress)


def _evaluate(req: EvalRequest, progress: Callable[[int, int], None] | None) -> EvalReport:
    images = scan(req.images)  # before loading any model: an empty folder fails fast
    model, refs, src, notes = build_predictors(req)
    pre = preprocess_for(src.arch.img_size, req.resize, req.mean, req.std)
    images = images.limit(req.limit)
    if images.labelled and len(images.classes) > src.arch.num_classes:
        raise EdgepruneError(
            f"{req.images} has {len(images.classes)} class folders but the model has "
            f"{src.arch.num_classes} outputs"
        )
    if images.labelled and len(images.classes) != src.arch.num_classes:
        notes.append(
            f"{len(images.classes)} class folders for {src.arch.num_classes} outputs: label i "
            "is the i-th folder name in sorted order"
        )
    world = distributed.start(torch.device("cpu"))
    try:
        run = _run_shard(
            model, refs, images, pre, model.batch or req.batch, world=world, progress=progress
        )
    finally:
        distributed.stop(world)
    if not len(run.read):
        raise EdgepruneError(
            f"none of the {len(images.files)} images in {req.images} could be read"
        )
    if not np.isfinite(run.logits).all():
        notes.append("the model produced non-finite logits")
    if len(run.skipped):
        notes.append(f"{len(run.skipped)} unreadable image(s) skipped")
    return EvalReport(
        model=model.name,
        images=images,
        preprocess=pre,
        logits=run.logits,
        read=[int(i) for i in run.read],
        skipped=[images.files[i] for i in run.skipped],
        references=run.references,
        reference_names={r.name: r.what for r in refs},
        notes=notes,
    )


def shard_images(images: ImageSet, world: World) -> tuple[ImageSet, list[int]]:
    """This process's share of ``images`` (``files[rank::size]``; all of them for one
    process) and the positions of its images in ``images.files``."""
    mine = distributed.shard(world, len(images.files))
    labels = None if images.labels is None else [images.labels[i] for i in mine]
    files = [images.files[i] for i in mine]
    return ImageSet(images.root, files, labels, images.classes, images.ignored), mine


@dataclass(kw_only=True)
class _Run:
    """The logits of the images read (positions ``read``), and the unreadable ones'
    positions, in the folder's order: on every process, the whole folder's."""

    logits: np.ndarray
    references: dict[str, np.ndarray]
    read: np.ndarray
    skipped: np.ndarray


def _run_shard(model, refs, images: ImageSet, pre, batch: int, *, world: World, progress) -> _Run:
    """Run the model and references over this process's share of ``images`` (all of
    them for one process), then gather every process's answers in the folder's order."""
    part, mine = shard_images(images, world)
    files = part.files
    skipped: list[Path] = []
    logits, read = [], []
    ref_logits: dict[str, list[np.ndarray]] = {r.name: [] for r in refs}
    for b in batches(part, pre, batch, skipped):
        logits.append(model(b.images))
        for r in refs:
            ref_logits[r.name].append(r(b.images))
        read += [mine[i] for i in b.indices]
        if progress is not None:
            progress(len(read) + len(skipped), len(files))
    position = dict(zip(files, mine, strict=True))
    lost = np.array([position[f] for f in skipped], dtype=np.int64)

    def gather(parts: list[np.ndarray]) -> np.ndarray:
        rows = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        return distributed.gather_rows(world, rows, np.array(read, dtype=np.int64))

    return _Run(
        logits=gather(logits),
        references={k: gather(v) for k, v in ref_logits.items()},
        read=gather([np.array(read, dtype=np.int64)]),
        skipped=distributed.gather_rows(world, lost, lost),
    )
