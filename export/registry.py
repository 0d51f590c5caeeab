"""The export-target registry: what a target declares, the request it is given and the
result it returns. Each target module defines one ``Target`` subclass and registers it
with ``@register``; ``export/targets.py`` lists the modules to import and dispatches.

This module imports no target (and no torch): target modules import it, not the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from edgeprune.core.errors import EdgepruneError
from edgeprune.export.fallbacks import summary as fallbacks_summary
from edgeprune.export.manifest import manifest_path

if TYPE_CHECKING:
    from edgeprune.core.source import Source
    from edgeprune.export.check import Finding, Graph

MIN_OPSET = 17


class Tolerance(NamedTuple):
    """Parity limits against PyTorch fp32: max |diff| of the logits, top-1 agreement and
    (``max_kl``, for quantized programs) the mean KL(fp32 ‖ artifact) of the softmax
    outputs in nats (None: not judged)."""

    atol: float
    min_top1: float = 1.0
    max_kl: float | None = None

    def to_dict(self) -> dict:
        d = {"atol": self.atol, "min_top1_agreement": self.min_top1}
        return d if self.max_kl is None else {**d, "max_kl": self.max_kl}


# An int8 program against fp32, on the seeded parity images. Mean KL(fp32 ‖ int8) ≤ 0.1
# nats: right quantizations measured 0.001–0.007 (ExecuTorch XNNPACK int8 and onnxruntime
# dynamic int8 on random-weight DeiT-shaped models, 32–64 inputs), a scale 8× too small
# (weights clipped) 0.38–0.50, random weights 0.82–0.89. Top-1 agreement ≥ 50 %: the
# right ones agree on 90–97 % of those images (random-weight logits are near-tied, and a
# parity check may run on as few as 4 images), the broken ones on 8–22 %
# (tests/test_int8_judgement.py checks both sides). max |diff| of the logits: a loose
# sanity bound only (a target may set its own).
INT8 = Tolerance(atol=10.0, min_top1=0.5, max_kl=0.1)


@dataclass(frozen=True)
class TargetOption:
    """An option only some targets take. ``name`` is its key in ``ExportRequest.options``,
    ``flag`` its CLI spelling (for messages), ``parse`` checks and converts a given value
    (raising ``EdgepruneError`` in one line); ``default`` is used when it is not given."""

    name: str
    flag: str
    default: Any = None
    parse: Callable[[Any], Any] | None = None


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """What to export: the options every target takes, and ``options`` for the ones only
    some targets take (by ``TargetOption.name``; ``None``/``False`` means not given)."""

    target: str = "onnx"
    out: Path | None = None
    batch: int = 1
    opset: int = MIN_OPSET
    force: bool = False
    parity_inputs: int = 16
    precision: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    checked: bool = False  # set by ``targets.validate``: precision and options resolved

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if v is not None and v is not False}

    def option(self, name: str) -> Any:
        return self.options[name]

    def common(self, progress=None) -> dict:
        """The keyword arguments every target's export function takes."""
        return {"force": self.force, "n_parity_inputs": self.parity_inputs, "progress": progress}


@dataclass(kw_only=True)
class ExportResult:
    """What an export did. ``error`` is set when the export could not finish here (e.g.
    no TensorRT to build the engine): the caller shows the result, then raises it."""

    target: str
    artifact: Path
    manifest: dict
    manifest_path: Path
    written: bool = True  # the artifact itself was written
    kept: list[str] = field(default_factory=list)  # what was written instead of it
    next_steps: list[str] = field(default_factory=list)  # plain lines: what to run where
    warnings: list[str] = field(default_factory=list)
    error: EdgepruneError | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else self.error.exit_code

    @property
    def parity(self) -> dict:
        return self.manifest["parity"]


class Target:
    """One export target. Subclass it in the target's own module and decorate the class
    with ``@register``; everything target-specific is declared here."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # the default output suffix
    suffixes: ClassVar[tuple[str, ...]] = ()  # accepted --out suffixes (default: suffix)
    directory: ClassVar[bool] = False  # the artifact is a bundle directory
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # the first is the default
    tolerances: ClassVar[Mapping[str, Tolerance]] = {"fp32": Tolerance(1e-4, 1.0)}
    options: ClassVar[tuple[TargetOption, ...]] = ()
    # ---- `edgeprune check` rules (see export/check.py) ----
    checkable: ClassVar[bool] = True  # offered by `edgeprune check --target`
    supported_ops: ClassVar[frozenset[str] | None] = None  # None: every op of op_domains
    op_domains: ClassVar[frozenset[str]] = frozenset({"", "ai.onnx"})
    slow_ops: ClassVar[Mapping[str, str]] = {}  # op type -> why it is slow
    computed_topk: ClassVar[str] = "slow"  # severity of a TopK whose K is computed
    dynamic_dim: ClassVar[str] = "slow"  # severity of a non-constant I/O dimension
    dynamic_dim_note: ClassVar[str] = ""

    @property
    def default_precision(self) -> str:
        return self.precisions[0]

    @classmethod
    def accepted_suffixes(cls) -> tuple[str, ...]:
        return cls.suffixes or (cls.suffix,)

    def precision_hint(self, precision: str) -> str:
        return f"--target {self.name} takes --precision {' or '.join(self.precisions)}"

    def graph_rules(self, graph: Graph) -> list[Finding]:
        """Target-specific findings beyond the shared rules (node by node or whole graph)."""
        return []

    def export(self, source: Source, req: ExportRequest, out: Path, progress=None) -> ExportResult:
        raise NotImplementedError

    def module_artifact(self, module, input_shape: tuple[int, ...]) -> bytes:
        """``module`` (any ``nn.Module`` of one input) at one fixed input shape as this
        target's artifact, in memory: what ``profile`` times for a runtime loading this
        target's artifacts (``Runtime.target``). No parity check: pieces are random."""
        raise EdgepruneError(f"--target {self.name} cannot lower profile pieces")

    def result(self, out: Path, manifest: dict) -> ExportResult:
        """The result of an export that wrote its artifact and manifest."""

        named = fallbacks_summary(manifest.get("fallbacks"))
        return ExportResult(
            target=self.name,
            artifact=Path(out),
            manifest=manifest,
            manifest_path=manifest_path(out),
            warnings=[named] if named else [],
        )


TARGETS: dict[str, Target] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: add one instance of ``cls`` to the registry under ``cls.name``."""
    if cls.name in TARGETS:
        raise RuntimeError(f"export target '{cls.name}' registered twice")
    TARGETS[cls.name] = cls()
    return cls


def option_owners(name: str) -> list[str]:
    return [t.name for t in TARGETS.values() if any(o.name == name for o in t.options)]


def refuse_foreign_options(target: Target, req: ExportRequest) -> None:
    """One line for an option the target does not take, naming the targets that do."""
    declared = {o.name for o in target.options}
    for name in req.given():
        if name in declared:
            continue
        owners = option_owners(name)
        if not owners:
            raise EdgepruneError(f"unknown export option '{name}'")
        flag = next(o.flag for o in TARGETS[owners[0]].options if o.name == name)
        raise EdgepruneError(
            f"{flag} does not apply to --target {target.name}",
            f"it is for --target {' or '.join(owners)}",
        )


def parse_options(target: Target, req: ExportRequest) -> ExportRequest:
    """The request with the target's options checked and parsed, defaults filled in."""
    given = req.given()
    values = {}
    for opt in target.options:
        value = given.get(opt.name)
        values[opt.name] = opt.default if value is None else (opt.parse or _same)(value)
    return replace(req, options=values, checked=True)


def _same(value: Any) -> Any:
    return value
