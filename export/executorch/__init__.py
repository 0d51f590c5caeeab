"""The ExecuTorch target (``.pte``, XNNPACK): ``target`` registers it, ``lowering`` partitions
and lowers the graph, ``int8`` quantizes it (PT2E)."""

from edgeprune.export.executorch import target  # noqa: F401  (registers the target)
