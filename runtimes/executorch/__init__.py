"""The ExecuTorch runtime: ``runner`` loads and times a ``.pte`` in this process or through a
transport; ``kernel_library`` builds and loads edgeprune's own kernels (``kernels/*.cpp``)."""
