"""The ExecuTorch runtime: ``runner`` loads and times a ``.pte`` in this process or through a
transport; ``kernel_library`` builds and loads edgeprune's own kernels (``kernels/*.cpp``).

``import_executorch()`` is the one place the optional ``executorch`` package (the
``executorch`` extra) is imported, for the runtime here and for the export target."""

from __future__ import annotations

import importlib
import importlib.util
import sys

from edgeprune.core.errors import MissingRuntimeError

INSTALL_HINT = 'pip install "edgeprune[executorch]"  (executorch 1.4.x, built against torch 2.13)'


def installed() -> bool:
    """Whether the executorch package is importable (without importing it)."""
    if "executorch" in sys.modules:
        return sys.modules["executorch"] is not None
    return importlib.util.find_spec("executorch") is not None


def import_executorch(module: str = ""):
    """``executorch``, or its module ``executorch.<module>`` (``"exir"``, ``"runtime"``…);
    one line (``MissingRuntimeError``, exit 2) where it is not installed or does not
    import (a wheel built against another torch)."""
    name = f"executorch.{module}" if module else "executorch"
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if not installed():
            raise MissingRuntimeError(
                "the executorch package is not installed", INSTALL_HINT
            ) from None
        why = " ".join(str(e).split())[:160]
        raise MissingRuntimeError(f"{name} does not import: {why}", INSTALL_HINT) from None
