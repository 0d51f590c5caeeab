"""A run's checkpoint, written after every epoch, and ``--resume``.

One file holds everything: ``model`` (the method's key layout, loadable by every
edgeprune command and by the method's own code), ``edgeprune`` (the schedule read off
the model after that epoch, with what it was trained for: ``edgeprune export`` needs no
``--keep``), and ``resume`` (the epoch reached, the optimiser's and EMA's state, the
history and the run's fingerprint). It is written under a temporary name and renamed
into place, so an interruption leaves the previous epoch's file whole.

A run resumes at the start of the epoch after the last one saved; every epoch's random
streams are seeded by (seed, epoch) and every image's by its index, so the resumed
epochs equal those of a run that was never interrupted.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeprune.core.atomic import atomic_path
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import MethodConfig


@dataclass(kw_only=True)
class Resume:
    """What a checkpoint lets a run continue from."""

    epoch: int  # epochs completed
    model: dict[str, torch.Tensor]
    optimizer: dict
    ema: dict | None
    scaler: dict | None
    fingerprint: dict
    history: list[dict] = field(default_factory=list)


def record(
    method: str, cfg: MethodConfig, trained_for: dict, epoch: int, predicted_ms: float
) -> dict:
    """The checkpoint's ``edgeprune`` record (read back by ``core.record``)."""
    return {
        "method": method,
        "prune_locs": list(cfg.prune_locs),
        "keep_ratios": [float(r) for r in cfg.keep_ratios],
        "options": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in cfg.options.items()
            if isinstance(v, int | float | str | bool | tuple | list)
        },
        "trained_for": dict(trained_for),
        "epoch": epoch,
        "predicted_ms": predicted_ms,
    }


def save(path: Path, *, model: dict, rec: dict, resume: dict) -> None:
    """Write the checkpoint atomically (temporary name, then rename)."""
    data = {
        "model": {k: v.detach().cpu().clone() for k, v in model.items()},
        "edgeprune": rec,
        "resume": resume,
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(data, tmp)


def load(path: Path) -> Resume:
    """A checkpoint's resume state (weights_only); one line when it has none."""
    path = Path(path)
    if not path.is_file():
        raise EdgepruneError(f"--resume {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        msg = " ".join(str(e).split())[:120]
        raise EdgepruneError(f"--resume {path} is not a readable checkpoint ({msg})") from None
    r = obj.get("resume") if isinstance(obj, Mapping) else None
    if not isinstance(r, Mapping) or not isinstance(obj.get("model"), Mapping):
        raise EdgepruneError(
            f"--resume {path} holds no training state",
            "resume from a checkpoint 'edgeprune finetune' wrote",
        )
    try:
        return Resume(
            epoch=int(r["epoch"]),
            model=dict(obj["model"]),
            optimizer=dict(r["optimizer"]),
            ema=r.get("ema"),
            scaler=r.get("scaler"),
            fingerprint=dict(r["fingerprint"]),
            history=list(r.get("history") or []),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise EdgepruneError(f"--resume {path}: its training state is incomplete ({e})") from None


def check_same_run(resume: Resume, fingerprint: dict, path: Path) -> None:
    """Refuse a checkpoint another run wrote, naming the first setting that differs."""
    for key in sorted(set(fingerprint) | set(resume.fingerprint)):
        mine, theirs = fingerprint.get(key), resume.fingerprint.get(key)
        if mine != theirs:
            raise EdgepruneError(
                f"--resume {path} is another run's checkpoint: "
                f"its {key} is {theirs!r}, this run's {mine!r}",
                "resume with the same command, or start a new run without --resume",
            )
