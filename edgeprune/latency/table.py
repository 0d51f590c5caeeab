"""The latency table (a device profile): schema, validation, load and atomic save.

One JSON file per (device, runtime, precision, threads, batch, arch[, method]):

    {
      "schema": "edgeprune.profile", "version": 1, "measured": true,
      "device": {"name", "runtime", "runtime_version", "precision", "threads",
                 "host", "fingerprint"},
      "arch": {Arch fields}, "method": "dynamicvit" | null, "batch": 1,
      "date": ISO-8601,
      "tables": {
        "block": {"tokens": [...increasing...], "median_ms": [...], "p90_ms": [...]},
        "attn":  {...same...},   # optional: attention half (norm1+attn+residual)
        "mlp":   {...same...},   # optional: MLP half (norm2+mlp+residual)
        "embed": {"median_ms": x, "p90_ms": y},  # patch embedding + CLS + position
        "head":  {"median_ms": x, "p90_ms": y},   # final norm + classifier
        "selectors": {"<method>": {"tokens": [tokens_in...], "median_ms": [...], "p90_ms": [...]}},
        "e2e": {                                  # optional: whole models timed in the sweep
          "anchors": [{"label", "attn_tokens", "mlp_tokens", "selector_tokens_in",
                       "median_ms", "p90_ms"}, ...],
          "offset_ms": a, "scale": b              # predicted = a + b * Σ pieces
        }
      }
    }

Latency at a token count between grid points is linear interpolation
(``piecewise_linear``, the one implementation; ``Curve.at``); the latency model
(edgeprune.latency.model) builds on these curves. Pieces timed alone do not add up exactly
to a whole model (inter-op overhead, cache state, gathers between blocks), so the
sweep also times a few whole models ("anchors") and stores an affine end-to-end
correction fitted on them (``tables.e2e``).

``edgeprune validate`` writes its verdict into the file it checked, in
``extra["validation"]`` (``record_validation``): ``{"median_error", "limit", "trusted",
"date", …}``. ``extra`` is free-form, so readers that predate it keep reading the file;
a table whose median error on whole models is above VALIDATION_LIMIT is untrusted, and
every command that uses it says so (``untrusted_warning``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from edgeprune.core.arch import Arch
from edgeprune.core.atomic import write_json_atomic
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.schema import Strict, Tokens, load_json, validate

if TYPE_CHECKING:
    import torch

SCHEMA = "edgeprune.profile"
VERSION = 1
# validate's median error on whole models above this marks a table untrusted
VALIDATION_LIMIT = 0.10


def piecewise_linear(xs, ys, x: torch.Tensor, extrapolate: bool = True) -> torch.Tensor:
    """The one linear interpolation: ``ys`` at ``x`` (a float tensor of any shape,
    differentiable in ``x``) between the increasing knots ``xs``; past the ends, linear
    extrapolation from the two nearest knots, or (``extrapolate=False``) the end value."""

    t = torch.tensor(xs, dtype=x.dtype, device=x.device)
    y = torch.tensor(ys, dtype=x.dtype, device=x.device)
    if len(xs) == 1:
        return y[0] + 0.0 * x
    if not extrapolate:
        x = torch.minimum(torch.maximum(x, t[0]), t[-1])
    i = torch.searchsorted(t, x.detach().contiguous(), right=True) - 1
    i = i.clamp(0, len(xs) - 2)
    x0, x1, y0, y1 = t[i], t[i + 1], y[i], y[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class Curve:
    tokens: tuple[int, ...]
    median_ms: tuple[float, ...]
    p90_ms: tuple[float, ...]

    def at(self, n: float) -> float:
        """Median latency at n tokens: ``piecewise_linear``, clamped at zero."""

        x = torch.tensor(float(n), dtype=torch.float64)
        return float(piecewise_linear(self.tokens, self.median_ms, x).clamp(min=0.0))

    def to_dict(self) -> dict:
        return {
            "tokens": list(self.tokens),
            "median_ms": list(self.median_ms),
            "p90_ms": list(self.p90_ms),
        }


@dataclass(frozen=True)
class Point:
    median_ms: float
    p90_ms: float

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms}


@dataclass(frozen=True)
class Anchor:
    """A whole model timed end-to-end in the profile sweep, with its token counts."""

    label: str
    attn_tokens: tuple[int, ...]
    mlp_tokens: tuple[int, ...]
    selector_tokens_in: tuple[int, ...]
    median_ms: float
    p90_ms: float

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "attn_tokens": list(self.attn_tokens),
            "mlp_tokens": list(self.mlp_tokens),
            "selector_tokens_in": list(self.selector_tokens_in),
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
        }


@dataclass(frozen=True)
class EndToEnd:
    """The end-to-end correction: predicted = offset_ms + scale * (sum of the pieces)."""

    anchors: tuple[Anchor, ...]
    offset_ms: float = 0.0
    scale: float = 1.0

    def to_dict(self) -> dict:
        return {
            "anchors": [a.to_dict() for a in self.anchors],
            "offset_ms": self.offset_ms,
            "scale": self.scale,
        }


@dataclass
class LatencyTable:
    device: dict
    arch: Arch
    method: str | None
    batch: int
    date: str
    measured: bool
    block: Curve
    embed: Point
    head: Point
    attn: Curve | None = None
    mlp: Curve | None = None
    selectors: dict[str, Curve] = field(default_factory=dict)
    e2e: EndToEnd | None = None  # whole-model anchors and the correction fitted on them
    extra: dict = field(default_factory=dict)  # anything else the producer recorded

    def to_dict(self) -> dict:
        tables: dict = {
            "block": self.block.to_dict(),
            "embed": self.embed.to_dict(),
            "head": self.head.to_dict(),
            "selectors": {k: v.to_dict() for k, v in self.selectors.items()},
        }
        if self.attn is not None:
            tables["attn"] = self.attn.to_dict()
        if self.mlp is not None:
            tables["mlp"] = self.mlp.to_dict()
        if self.e2e is not None:
            tables["e2e"] = self.e2e.to_dict()
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "measured": self.measured,
            "device": self.device,
            "arch": self.arch.to_dict(),
            "method": self.method,
            "batch": self.batch,
            "date": self.date,
            "tables": tables,
            **({"extra": self.extra} if self.extra else {}),
        }

    def save(self, path: Path) -> None:
        write_json_atomic(Path(path), self.to_dict())

    @property
    def validation(self) -> dict | None:
        """``validate``'s last verdict on this table (``extra["validation"]``), if any."""
        v = self.extra.get("validation")
        return v if isinstance(v, dict) else None

    @property
    def trusted(self) -> bool:
        """False when ``validate`` marked the table untrusted (its median error on whole
        models above the limit); True when it passed, or was never validated."""
        return (self.validation or {}).get("trusted") is not False


def untrusted_warning(table: LatencyTable, name: str | Path) -> str | None:
    """The one line every command using an untrusted table prints (None: trusted)."""
    if table.trusted:
        return None
    v = table.validation or {}
    err, limit = v.get("median_error"), v.get("limit", VALIDATION_LIMIT)
    error = f"{err:.1%}" if isinstance(err, int | float) else "?"
    return (
        f"latency table {name} is UNTRUSTED: 'edgeprune validate' measured a median error of "
        f"{error} on whole models ({v.get('date', 'undated')}), above the {limit:.0%} limit; "
        "its predictions are off by about that much. Profile again on a quiet machine with "
        "more runs, then validate it again"
    )


def record_validation(path: str | Path, verdict: dict) -> None:
    """Write ``validate``'s verdict into the table file at ``path``, atomically, in
    ``extra["validation"]``; everything else in the file stays as it is (a file that is
    not a valid latency table is refused, not rewritten)."""
    path = Path(path)
    d = load_json(path, f"profile {path} is not a valid latency table", HINT)
    from_dict(d, path)
    extra = d.get("extra") if isinstance(d.get("extra"), dict) else {}
    d["extra"] = {**extra, "validation": verdict}
    write_json_atomic(path, d)


HINT = "re-measure it with 'edgeprune profile'"

# ---- the file, as pydantic models (edgeprune.core.schema) ------------------------------
#: a latency in ms: far beyond any real device, small enough that a model's sum of
#: pieces times the end-to-end scale stays finite
MAX_MS = 1e9
Millis = Annotated[float, Field(ge=0, le=MAX_MS, allow_inf_nan=False)]
#: a latency that divides (an error, a ratio): at least 1 ps, no denormal 1e-320 whose
#: inverse is infinite
MIN_MS = 1e-9
PositiveMillis = Annotated[float, Field(ge=MIN_MS, le=MAX_MS, allow_inf_nan=False)]
#: a token list: one entry per grid point or per block
TokenList = Annotated[list[Tokens], Field(max_length=100_000)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]
#: a relative error or spread (0.1: 10 %); a table off by more than 1000× says nothing
Share = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]


def _shape_error(what: str) -> PydanticCustomError:
    return PydanticCustomError("table_shape", what)


class CurveFile(Strict):
    tokens: Annotated[TokenList, Field(min_length=1)]
    median_ms: list[Millis]
    p90_ms: list[Millis] | None = None

    @model_validator(mode="after")
    def _lists(self) -> CurveFile:
        n = len(self.tokens)
        if len(self.median_ms) != n or (self.p90_ms is not None and len(self.p90_ms) != n):
            raise _shape_error("tokens, median_ms and p90_ms differ in length")
        if any(b <= a for a, b in pairwise(self.tokens)):
            raise _shape_error("tokens must strictly increase")
        return self


class PointFile(Strict):
    median_ms: Millis
    p90_ms: Millis | None = None


class AnchorFile(Strict):
    label: str
    attn_tokens: TokenList
    mlp_tokens: TokenList
    selector_tokens_in: TokenList = []
    median_ms: PositiveMillis
    p90_ms: Millis | None = None


class EndToEndFile(Strict):
    anchors: Annotated[list[AnchorFile], Field(max_length=100_000)]
    offset_ms: Annotated[float, Field(ge=-MAX_MS, le=MAX_MS, allow_inf_nan=False)] = 0.0
    scale: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0


class TablesFile(Strict):
    block: CurveFile
    embed: PointFile
    head: PointFile
    attn: CurveFile | None = None
    mlp: CurveFile | None = None
    selectors: dict[str, CurveFile] = {}
    e2e: EndToEndFile | None = None


class ArchFile(Strict):
    """``core.arch.Arch``'s fields (no others), bounded."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]
    embed_dim: Annotated[int, Field(ge=1, le=65_536)]
    num_heads: Annotated[int, Field(ge=1, le=4096)]
    depth: Annotated[int, Field(ge=1, le=1000)] = 12
    patch_size: Annotated[int, Field(ge=1, le=4096)] = 16
    img_size: Annotated[int, Field(ge=1, le=16_384)] = 224
    mlp_ratio: Annotated[float, Field(gt=0, le=64, allow_inf_nan=False)] = 4.0
    num_classes: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    in_chans: Annotated[int, Field(ge=1, le=64)] = 3

    @model_validator(mode="after")
    def _dims(self) -> ArchFile:
        if self.embed_dim % self.num_heads:
            raise _shape_error("embed_dim is not divisible by num_heads")
        if self.patch_size > self.img_size:
            raise _shape_error("patch_size is larger than img_size")
        return self


class DeviceFile(Strict):
    name: str
    runtime: str
    threads: Annotated[int, Field(ge=0, le=4096)]
    runtime_version: str | None = None
    precision: str | None = None
    host: str | None = None
    transport: str | None = None
    fingerprint: dict | None = None
    custom_kernels: bool = False


class VerdictFile(Strict):
    """``extra["validation"]``: what ``untrusted_warning`` and ``table-info`` read."""

    median_error: Share | None = None
    limit: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = VALIDATION_LIMIT
    trusted: bool | None = None
    date: str | None = None
    configs: Count | None = None


class NoiseFile(Strict):
    median_spread: Share  # the latency model's error reads it
    points: Count | None = None
    p90_spread: Share | None = None
    shape_tolerance: Share | None = None


class RetimedFile(Strict):
    count: Count | None = None
    still_breaking: list | None = None


class InterpPointFile(Strict):
    rel_err: Annotated[float, Field(ge=-1000, le=1000, allow_inf_nan=False)]


class InterpCheckFile(Strict):
    points: list[InterpPointFile]
    max_rel_err: Share | None = None


class FitRowFile(Strict):
    measured_ms: PositiveMillis
    corrected_ms: Annotated[float, Field(ge=-MAX_MS, le=MAX_MS, allow_inf_nan=False)]


class ExtraFile(Strict):
    """``extra`` is free-form; the keys edgeprune reads back are typed."""

    validation: VerdictFile | None = None
    noise: NoiseFile | None = None
    retimed: RetimedFile | None = None
    interp_check: InterpCheckFile | None = None
    e2e_fit: list[FitRowFile] | None = None


class TableFile(Strict):
    """A latency table file (``schema`` and ``version`` are checked before)."""

    measured: bool
    device: DeviceFile
    arch: ArchFile
    method: str | None = None
    batch: Annotated[int, Field(ge=1, le=1_000_000)]
    date: str
    tables: TablesFile
    extra: ExtraFile | None = None


def _bad(path, what: str) -> EdgepruneError:
    return EdgepruneError(f"profile {path} is not a valid latency table: {what}", HINT)


def _curve(c: CurveFile | None) -> Curve | None:
    if c is None:
        return None
    return Curve(tuple(c.tokens), tuple(c.median_ms), tuple(c.p90_ms or c.median_ms))


def _point(p: PointFile) -> Point:
    return Point(p.median_ms, p.median_ms if p.p90_ms is None else p.p90_ms)


def _e2e(e: EndToEndFile | None, path, depth: int) -> EndToEnd | None:
    if e is None:
        return None
    anchors = []
    for a in e.anchors:
        if len(a.attn_tokens) != depth or len(a.mlp_tokens) != depth:
            raise _bad(path, f"tables.e2e anchor {a.label!r} needs {depth} token counts")
        p90 = a.median_ms if a.p90_ms is None else a.p90_ms
        anchors.append(
            Anchor(a.label, tuple(a.attn_tokens), tuple(a.mlp_tokens),
                   tuple(a.selector_tokens_in), a.median_ms, p90)
        )  # fmt: skip
    return EndToEnd(tuple(anchors), e.offset_ms, e.scale)


def from_dict(d: dict, path: str | Path = "<dict>") -> LatencyTable:
    """The latency table in ``d`` (parsed JSON), checked against ``TableFile`` before any
    field is used: one line naming the field when it does not fit."""
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise _bad(path, f"'schema' is not '{SCHEMA}'")
    if d.get("version") != VERSION:
        raise EdgepruneError(
            f"profile {path} has version {d.get('version')!r}; "
            f"this edgeprune reads version {VERSION}",
            HINT,
        )
    f = validate(TableFile, d, f"profile {path} is not a valid latency table", HINT)
    tb = f.tables
    arch = Arch(**f.arch.model_dump())
    return LatencyTable(
        device=d["device"],
        arch=arch,
        method=f.method,
        batch=f.batch,
        date=f.date,
        measured=f.measured,
        block=_curve(tb.block),
        embed=_point(tb.embed),
        head=_point(tb.head),
        attn=_curve(tb.attn),
        mlp=_curve(tb.mlp),
        selectors={k: _curve(v) for k, v in tb.selectors.items()},
        e2e=_e2e(tb.e2e, path, arch.depth),
        extra=d.get("extra") or {},
    )


def load(path: str | Path) -> LatencyTable:
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"profile {path} does not exist")
    return from_dict(load_json(path, f"profile {path} is not a valid latency table", HINT), path)
