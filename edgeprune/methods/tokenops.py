"""Static token operations shared by the methods: every shape is a Python int."""

from __future__ import annotations

import torch


def drop_mask(weights: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """B×N float mask: 1 for the tokens not in ``keep_idx`` (B×K), 0 for the kept ones.
    Exports as ScatterElements on a constant."""
    return torch.ones_like(weights).scatter(1, keep_idx, 0.0)


def weighted_rest(
    x: torch.Tensor, weights: torch.Tensor, keep_idx: torch.Tensor, normalise: bool
) -> torch.Tensor:
    """One token from the tokens *not* kept: sum of x_i · w_i over them (B×1×C), divided
    by the sum of their weights when ``normalise``."""
    w = (weights * drop_mask(weights, keep_idx)).unsqueeze(1)  # B×1×N
    out = w @ x  # one MatMul, not a B×N×C product and a reduction over N
    if normalise:
        out = out / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return out
