"""One way to turn a result object into the plain dict its JSON carries."""

from __future__ import annotations


def record(obj: object, keys: str) -> dict:
    """``obj``'s attributes (fields or properties) named in ``keys`` (white-space
    separated), in that order, as a JSON-ready dict; ``key=attr`` stores ``obj.attr``
    under ``key``. Tuples become lists."""
    out = {}
    for spec in keys.split():
        key, _, attr = spec.partition("=")
        value = getattr(obj, attr or key)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out
