"""``--device`` for training: cpu, cuda, cuda:N or mps, and only one this machine has."""

from __future__ import annotations

import re

import torch

from edgeprune.core.errors import EdgepruneError

DEVICE_HINT = "expected cpu, cuda, cuda:N or mps"


def train_device(name: str) -> torch.device:
    """``--device``: cpu, cuda, cuda:N or mps, and only one this machine has."""
    m = re.fullmatch(r"(cpu|mps|cuda)(?::([0-9]{1,3}))?", str(name).strip())
    if m is None or (m[2] is not None and m[1] != "cuda"):
        raise EdgepruneError(f"--device {name} is not a training device", DEVICE_HINT)
    if m[1] == "cuda":
        if not torch.cuda.is_available():
            raise EdgepruneError(f"--device {name}: no CUDA GPU here", "use --device cpu")
        index = int(m[2] or 0)
        if index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise EdgepruneError(f"--device {name}: this machine has {count} CUDA GPU(s)")
    if m[1] == "mps" and not torch.backends.mps.is_available():
        raise EdgepruneError(f"--device {name}: no Apple GPU (MPS) here", "use --device cpu")
    return torch.device(m[0])
