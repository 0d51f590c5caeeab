"""The ExecuTorch runtime: ``runner`` loads and times a ``.pte`` in this process or through a
transport. Importing ``executorch`` and edgeprune's own kernels are shared with export:
``edgeprune.core.backends.optional`` and ``edgeprune.core.backends.executorch_kernels``."""
