"""The TensorRT runtime: ``runner`` times an engine (Python API or trtexec), ``engine``
builds one, ``trtexec`` reads trtexec's output. ``import_tensorrt()`` is the one place
the optional ``tensorrt`` package is imported."""

from __future__ import annotations

from edgeprune.core.errors import MissingRuntimeError

INSTALL_HINT = 'pip install "edgeprune[tensorrt]", or put trtexec on the PATH'


def import_tensorrt():
    """The ``tensorrt`` module; one line (``MissingRuntimeError``, exit 2) where it is not
    installed."""
    try:
        import tensorrt
    except ImportError:
        raise MissingRuntimeError(
            "the tensorrt Python package is not installed", INSTALL_HINT
        ) from None
    return tensorrt
