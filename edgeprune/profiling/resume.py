"""The resume file of a profile sweep (``edgeprune profile --resume``): every timed
piece is saved (atomically) to ``<out>.partial.json``; a rerun of the same request
reuses those timings. The caller removes it once the latency table is written."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BeforeValidator, Field

from edgeprune.core.atomic import write_json_atomic
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.schema import NonNegative, Strict, Tokens, load_json, validate
from edgeprune.latency.table import Millis
from edgeprune.runtimes.timing import Timing

R = TypeVar("R", bound="ResumeData")
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]


class ResumeData(Strict):
    """A resume file: the request it was made for, and what the work saved."""

    request: dict


class TimingFile(Strict):
    """A saved ``runtimes.timing.Timing``: its times are reused as measured ones."""

    median_ms: Millis
    p90_ms: Millis
    min_ms: Millis
    max_ms: Millis
    runs: Count
    ci_low_ms: Millis | None = None
    ci_high_ms: Millis | None = None
    ci_halfwidth: NonNegative | None = None
    tolerance: NonNegative | None = None
    converged: bool | None = None
    threads: Annotated[int, Field(ge=0, le=4096)] | None = None
    runtime: str = ""
    runtime_version: str = ""
    extra: dict = {}


def _as_tuple(v):
    return tuple(v) if isinstance(v, list) else v


#: one saved timing: [table, tokens (null for a piece without), round, timing]
TimingRow = Annotated[
    tuple[Annotated[str, Field(max_length=200)], Tokens | None, Count, TimingFile],
    BeforeValidator(_as_tuple),
]


class SweepResume(ResumeData):
    timings: list[TimingRow] = []


def read_resume(path: Path | None, key: dict, what: str, model: type[R] = ResumeData) -> R | None:
    """The saved data of the resume file ``path``, checked against ``model``, if it was
    made for the request ``key`` (None when there is none); ``what``: the work it
    resumes, for messages. A corrupt file: one line, naming what is wrong."""
    if path is None or not path.exists():
        return None
    corrupt, hint = f"resume file {path} is corrupt", f"delete it to start the {what} afresh"
    data = load_json(path, corrupt, hint)
    if not isinstance(data, dict):
        raise EdgepruneError(f"{corrupt}: not a JSON object", hint)
    if data.get("request") != key:
        raise EdgepruneError(
            f"resume file {path} is for a different {what}{_differing(data.get('request'), key)}",
            "rerun with the same options and inputs, or delete it to start afresh",
        )
    return validate(model, data, corrupt, hint)


def _differing(saved, key: dict) -> str:
    """`` (images_sha256 differs)``: which parts of the request changed (a ``*_sha256``
    one: a file's contents), for the message."""
    if not isinstance(saved, dict):
        return ""
    names = sorted(k[:40] for k in saved.keys() | key.keys() if saved.get(k) != key.get(k))
    if not names:
        return ""
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return f" ({', '.join(names[:4])}{more} differ{'s' if len(names) == 1 else ''})"


def resume_path(table_path: Path) -> Path:
    """Where the resume file of the latency table ``table_path`` lives."""
    return table_path.with_name(table_path.name + ".partial.json")


class ResumeFile:
    def __init__(self, path: Path, key: dict):
        self.path, self.key = Path(path), key
        self.timings: dict[tuple, dict] = {}
        data = read_resume(self.path, key, "sweep", SweepResume)
        for table, tokens, rnd, t in data.timings if data is not None else []:
            self.timings[(table, tokens, rnd)] = t.model_dump()

    def get(self, table: str, tokens, rnd: int) -> Timing | None:
        d = self.timings.get((table, tokens, rnd))
        if d is None:
            return None
        names = {f.name for f in fields(Timing)}
        return Timing(**{k: v for k, v in d.items() if k in names})

    def put(self, table: str, tokens, rnd: int, t: Timing) -> None:
        self.timings[(table, tokens, rnd)] = asdict(t)
        rows = [[k[0], k[1], k[2], v] for k, v in self.timings.items()]
        write_json_atomic(self.path, {"request": self.key, "timings": rows})
