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

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgeprune.core.arch import Arch
from edgeprune.core.atomic import write_json_atomic
from edgeprune.core.errors import EdgepruneError

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
    ``extra["validation"]``; everything else in the file stays as it is."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not JSON ({e.__class__.__name__})") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise _bad(path, f"'schema' is not '{SCHEMA}'")
    extra = d.get("extra") if isinstance(d.get("extra"), dict) else {}
    d["extra"] = {**extra, "validation": verdict}
    write_json_atomic(path, d)


def _bad(path, what: str) -> EdgepruneError:
    return EdgepruneError(
        f"profile {path} is not a valid latency table: {what}",
        "re-measure it with 'edgeprune profile'",
    )


def _curve(d, path, name: str) -> Curve:
    if not isinstance(d, dict):
        raise _bad(path, f"tables.{name} is not an object")
    try:
        t = tuple(int(x) for x in d["tokens"])
        m = tuple(float(x) for x in d["median_ms"])
        p = tuple(float(x) for x in d.get("p90_ms", d["median_ms"]))
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(path, f"tables.{name} lacks tokens/median_ms ({e})") from None
    if not t or len(t) != len(m) or len(t) != len(p):
        raise _bad(path, f"tables.{name} has mismatched or empty lists")
    if any(b <= a for a, b in zip(t, t[1:], strict=False)):
        raise _bad(path, f"tables.{name}.tokens must strictly increase")
    if any(not math.isfinite(x) or x < 0 for x in m + p):
        raise _bad(path, f"tables.{name} has negative or non-finite latencies")
    return Curve(t, m, p)


def _point(d, path, name: str) -> Point:
    try:
        m, p = float(d["median_ms"]), float(d.get("p90_ms", d["median_ms"]))
    except (KeyError, TypeError, ValueError):
        raise _bad(path, f"tables.{name} lacks median_ms") from None
    if not (math.isfinite(m) and m >= 0):
        raise _bad(path, f"tables.{name} has a negative or non-finite latency")
    return Point(m, p)


def _e2e(d, path, depth: int) -> EndToEnd:
    if not isinstance(d, dict) or not isinstance(d.get("anchors"), list):
        raise _bad(path, "tables.e2e needs a list of anchors")
    anchors = []
    try:
        for a in d["anchors"]:
            anchors.append(
                Anchor(
                    str(a["label"]),
                    tuple(int(x) for x in a["attn_tokens"]),
                    tuple(int(x) for x in a["mlp_tokens"]),
                    tuple(int(x) for x in a.get("selector_tokens_in", [])),
                    float(a["median_ms"]),
                    float(a.get("p90_ms", a["median_ms"])),
                )
            )
        offset, scale = float(d.get("offset_ms", 0.0)), float(d.get("scale", 1.0))
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(path, f"tables.e2e has a malformed anchor ({e})") from None
    for a in anchors:
        if len(a.attn_tokens) != depth or len(a.mlp_tokens) != depth:
            raise _bad(path, f"tables.e2e anchor {a.label} needs {depth} token counts")
        if not (math.isfinite(a.median_ms) and a.median_ms > 0):
            raise _bad(path, f"tables.e2e anchor {a.label} has a non-positive latency")
    if not (math.isfinite(offset) and math.isfinite(scale) and scale > 0):
        raise _bad(path, "tables.e2e needs a finite offset_ms and a positive scale")
    return EndToEnd(tuple(anchors), offset, scale)


def from_dict(d: dict, path: str | Path = "<dict>") -> LatencyTable:
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise _bad(path, f"'schema' is not '{SCHEMA}'")
    if d.get("version") != VERSION:
        raise EdgepruneError(
            f"profile {path} has version {d.get('version')!r}; "
            f"this edgeprune reads version {VERSION}",
            "re-measure it with 'edgeprune profile'",
        )
    for key in ("device", "arch", "batch", "date", "tables", "measured"):
        if key not in d:
            raise _bad(path, f"missing '{key}'")
    try:
        arch = Arch(**d["arch"])
    except TypeError as e:
        raise _bad(path, f"bad arch ({e})") from None
    dev = d["device"]
    if not isinstance(dev, dict) or not all(k in dev for k in ("name", "runtime", "threads")):
        raise _bad(path, "device needs name, runtime and threads")
    if not isinstance(d["batch"], int) or d["batch"] < 1:
        raise _bad(path, "batch must be a positive integer")
    tb = d["tables"]
    if not isinstance(tb, dict):
        raise _bad(path, "tables is not an object")
    for key in ("block", "embed", "head"):
        if key not in tb:
            raise _bad(path, f"missing tables.{key}")
    return LatencyTable(
        device=dev,
        arch=arch,
        method=d.get("method"),
        batch=d["batch"],
        date=str(d["date"]),
        measured=bool(d["measured"]),
        block=_curve(tb["block"], path, "block"),
        embed=_point(tb["embed"], path, "embed"),
        head=_point(tb["head"], path, "head"),
        attn=_curve(tb["attn"], path, "attn") if "attn" in tb else None,
        mlp=_curve(tb["mlp"], path, "mlp") if "mlp" in tb else None,
        selectors={
            k: _curve(v, path, f"selectors.{k}") for k, v in tb.get("selectors", {}).items()
        },
        e2e=_e2e(tb["e2e"], path, arch.depth) if "e2e" in tb else None,
        extra=d.get("extra", {}),
    )


def load(path: str | Path) -> LatencyTable:
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"profile {path} does not exist")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not JSON ({e.__class__.__name__})") from None
    return from_dict(d, path)
