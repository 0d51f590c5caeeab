"""The registry of pruning methods. Adding a method = one module + one line here."""

from __future__ import annotations

from collections.abc import Sequence

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods.avit import AViT
from edgeprune.core.methods.base import Method, MethodConfig
from edgeprune.core.methods.dense import Dense
from edgeprune.core.methods.dynamicvit import DynamicViT
from edgeprune.core.methods.evit import EViT
from edgeprune.core.methods.spvit import SPViT
from edgeprune.core.methods.tome import ToMe

METHODS: dict[str, Method] = {
    m.name: m for m in (Dense(), DynamicViT(), SPViT(), EViT(), ToMe(), AViT())
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise EdgepruneError(
            f"unknown method '{name}'", f"expected one of: {', '.join(METHODS)}"
        ) from None


def detect_method(keys: Sequence[str]) -> Method:
    """The method whose parameters a checkpoint holds; plain DeiT keys mean dense."""
    found = [m for m in METHODS.values() if m.key_prefix is not None and m.matches(keys)]
    if len(found) > 1:
        names = ", ".join(m.name for m in found)
        raise EdgepruneError(f"checkpoint keys match several methods ({names})", "pass --method")
    return found[0] if found else METHODS["dense"]


__all__ = ["METHODS", "Method", "MethodConfig", "detect_method", "get_method"]
