"""Comma-separated number lists from the command line (``--keep``, ``--locs``)."""

from __future__ import annotations

from collections.abc import Callable

from edgeprune.core.errors import EdgepruneError


def _parse_list(text: str | None, what: str, cast: Callable, noun: str, example: str):
    if text is None:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(cast(part))
        except ValueError:
            raise EdgepruneError(
                f"{what} '{part}' is not {noun}", f"e.g. {what} {example}"
            ) from None
    return tuple(out)


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    return _parse_list(text, what, float, "a number", "0.7,0.49,0.343")


def parse_ints(text: str | None, what: str) -> tuple[int, ...] | None:
    return _parse_list(text, what, int, "an integer", "3,6,9")


def parse_triple(text: str | None, what: str) -> tuple[float, ...] | None:
    """Three numbers (R,G,B), e.g. --mean / --std."""
    v = parse_floats(text, what)
    if v is not None and len(v) != 3:
        raise EdgepruneError(f"{what} needs three numbers (R,G,B), got {len(v)}")
    return v
