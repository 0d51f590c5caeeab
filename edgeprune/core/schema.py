"""Typed validation of the files edgeprune reads: one pydantic model per file format
(or per part of one), and :func:`validate`, which turns pydantic's errors into one line.

Every reader of a JSON file (latency tables, budgets, sensitivity files, device
descriptors, manifests, resume files, runner output) checks its input here before using
a field, so a wrong type, a missing key or a NaN/inf/huge number ends as
``error: <file> is not a valid <what>: <field>: <problem>`` (exit 2), never as an
internal error further in.

Conventions for the models:

- ``Strict`` is the base: strict types (a string is not a number), finite floats, and
  unknown keys allowed (older and newer files keep working) unless a model says
  ``extra="forbid"``;
- numbers a user could make absurd carry bounds (``Annotated[int, Field(ge=1, le=...)]``);
- the model describes the *file*; the code keeps its own dataclasses and builds them from
  the validated model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeprune.core.errors import EdgepruneError

M = TypeVar("M", bound=BaseModel)

#: a finite float (no NaN, no ±inf); JSON's 1e400 parses as inf and is refused too
Finite = Annotated[float, Field(allow_inf_nan=False)]
#: a finite float ≥ 0 (times, shares)
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: a float > 0 that divides (latencies, scales): within [1e-9, 1e12], no denormal whose
#: inverse is infinite and no ratio of two of them that overflows
Positive = Annotated[float, Field(ge=1e-9, le=1e12, allow_inf_nan=False)]
#: a token count: a ViT has at most a few thousand tokens
Tokens = Annotated[int, Field(ge=0, le=1_000_000)]
#: a thread count
Threads = Annotated[int, Field(ge=1, le=4096)]


class Strict(BaseModel):
    """Base of every file model: strict types, finite floats, unknown keys kept."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow", frozen=True)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def first_error(err: ValidationError) -> str:
    """The first of pydantic's errors as ``field: problem`` (one line, no input echoed)."""
    e = err.errors(include_url=False, include_input=False)[0]
    msg = e["msg"]
    if e["type"] == "missing":
        msg = "missing"
    elif e["type"] in ("model_type", "model_attributes_type", "dataclass_type"):
        msg = "should be an object ({...})"  # not pydantic's "instance of <our class>"
    return " ".join(f"{_where(tuple(e['loc']))}: {msg}".split())


def validate(model: type[M], data: Any, what: str, hint: str | None = None) -> M:
    """``data`` (already parsed JSON) checked against ``model``; an :class:`EdgepruneError`
    ``<what>: <field>: <problem>`` when it does not fit. ``what`` names the file and its
    kind, e.g. ``"profile t.json is not a valid latency table"``."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise EdgepruneError(f"{what}: {first_error(e)}", hint) from None
    except (RecursionError, OverflowError) as e:  # absurdly nested or sized input
        raise EdgepruneError(f"{what}: {e.__class__.__name__}", hint) from None


def loads(text: str | bytes, what: str, hint: str | None = None) -> Any:
    """JSON from ``text``, with NaN/Infinity literals refused (Python's json accepts them,
    JSON does not); ``<what>: <why>`` (one line) when it is not JSON."""

    def _no_constants(name: str) -> float:
        raise _NotJson(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError too
        raise EdgepruneError(f"{what}: {_why_not_json(e)}", hint) from None


def load_json(path: str | Path, what: str, hint: str | None = None) -> Any:
    """JSON from the file ``path`` (see :func:`loads`); one line when the file is
    missing, unreadable or not JSON."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgepruneError(f"{path} does not exist", hint) from None
    except IsADirectoryError:
        raise EdgepruneError(f"{path} is a folder, not a file", hint) from None
    except OSError as e:
        raise EdgepruneError(f"cannot read {path}: {e.strerror or e}", hint) from None
    return loads(data, f"{what}: not JSON", hint)


class _NotJson(ValueError):
    """A literal Python's json reads and JSON has not (NaN, Infinity, -Infinity)."""


def _why_not_json(e: Exception) -> str:
    """What is wrong with a file that is not JSON, in words (no exception class names)."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg.lower()} at line {e.lineno}, column {e.colno}"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte {e.start})"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, _NotJson):
        return str(e)
    return "unreadable"


def finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def non_finite_in(obj: object, where: str = "") -> str | None:
    """Where in a JSON-like tree (dicts, lists, tuples) a float is NaN or infinite, as
    ``a.b[2]`` (``"the value"`` for a bare float), or None when there is none."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the value"
    if isinstance(obj, dict):
        items = [(f"{where}.{k}" if where else str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list | tuple):
        items = [(f"{where}[{i}]", v) for i, v in enumerate(obj)]
    else:
        return None
    for at, v in items:
        found = non_finite_in(v, at)
        if found is not None:
            return found
    return None


def dumps(obj: Any, what: str = "JSON output", **kwargs) -> str:
    """``json.dumps`` that never writes NaN or Infinity (not JSON: other readers refuse
    the file, and a NaN there was a bug upstream): one line naming the field instead."""
    bad = non_finite_in(obj)
    if bad is not None:
        raise EdgepruneError(
            f"refusing to write a non-finite number (NaN or infinity) at {bad} into {what}"
        )
    return json.dumps(obj, allow_nan=False, **kwargs)
