"""The one place each heavy optional package is imported, for the runtime here and for the
export target alike: ``import_executorch``, ``import_coremltools``, ``import_tensorrt``.
Each raises one line (``MissingRuntimeError``, exit 2) when its package is missing."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

from edgeprune.core.errors import MissingRuntimeError

# ---- ExecuTorch (the ``executorch`` extra) ---------------------------------------------
EXECUTORCH_HINT = (
    'pip install "edgeprune[executorch]"  (executorch 1.4.x, built against torch 2.13)'
)


def executorch_installed() -> bool:
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
        if not executorch_installed():
            raise MissingRuntimeError(
                "the executorch package is not installed", EXECUTORCH_HINT
            ) from None
        why = " ".join(str(e).split())[:160]
        raise MissingRuntimeError(f"{name} does not import: {why}", EXECUTORCH_HINT) from None


# ---- CoreML ----------------------------------------------------------------------------
def import_coremltools():
    """The ``coremltools`` module, its import-time log lines silenced; one line
    (``MissingRuntimeError``, exit 2) where it is not installed."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)  # before the import: it warns
    try:
        import coremltools as ct
    except ImportError:
        raise MissingRuntimeError(
            "coremltools is not installed", "pip install coremltools"
        ) from None
    return ct


# ---- TensorRT (the ``tensorrt`` extra) -------------------------------------------------
TENSORRT_HINT = 'pip install "edgeprune[tensorrt]", or put trtexec on the PATH'


def import_tensorrt():
    """The ``tensorrt`` module; one line (``MissingRuntimeError``, exit 2) where it is not
    installed."""
    try:
        import tensorrt
    except ImportError:
        raise MissingRuntimeError(
            "the tensorrt Python package is not installed", TENSORRT_HINT
        ) from None
    return tensorrt
