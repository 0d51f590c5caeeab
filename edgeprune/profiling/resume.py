"""The resume file of a profile sweep (``edgeprune profile --resume``): every timed
piece is saved (atomically) to ``<out>.partial.json``; a rerun of the same request
reuses those timings. The caller removes it once the latency table is written."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from edgeprune.core.atomic import write_json_atomic
from edgeprune.core.errors import EdgepruneError
from edgeprune.runtimes.timing import Timing


def read_resume(path: Path | None, key: dict, what: str) -> dict | None:
    """The saved data of the resume file ``path`` if it was made for the request
    ``key`` (None when there is none); ``what``: the work it resumes, for messages."""
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        assert isinstance(data, dict)
    except (OSError, ValueError, AssertionError):
        raise EdgepruneError(
            f"resume file {path} is corrupt", f"delete it to start the {what} afresh"
        ) from None
    if data.get("request") != key:
        raise EdgepruneError(
            f"resume file {path} is for a different {what}",
            "rerun with the same options, or delete it to start afresh",
        )
    return data


def resume_path(table_path: Path) -> Path:
    """Where the resume file of the latency table ``table_path`` lives."""
    return table_path.with_name(table_path.name + ".partial.json")


class ResumeFile:
    def __init__(self, path: Path, key: dict):
        self.path, self.key = Path(path), key
        self.timings: dict[tuple, dict] = {}
        data = read_resume(self.path, key, "sweep") or {}
        for table, tokens, rnd, t in data.get("timings", []):
            self.timings[(table, tokens, rnd)] = t

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
