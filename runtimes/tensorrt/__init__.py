"""The TensorRT runtime: ``runner`` times an engine (Python API or trtexec). Building an
engine, finding trtexec and its version, and importing ``tensorrt`` are shared with export:
``edgeprune.core.backends.tensorrt`` and ``edgeprune.core.backends.optional``."""
