"""The ``edgeprune`` record a trained checkpoint carries: the schedule it was trained to.

``edgeprune finetune`` writes, beside ``model`` (the method's own key layout):

    "edgeprune": {"method": "spvit", "prune_locs": [3, 6, 9], "keep_ratios": [...],
                  "options": {...}, "trained_for": {"budget": ..., "device": ...,
                  "target_ms": ..., "aim_ms": ...}, "epoch": 2, ...}

and loading the checkpoint takes the method and schedule from it, so that
``edgeprune export finetuned.pth`` needs no ``--method``/``--keep`` (they still
override it). The record is validated like every file edgeprune reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from edgeprune.core.methods import MethodConfig
from edgeprune.core.schema import Strict, validate

Scalar = int | float | str | bool
Option = Scalar | list[Scalar] | None


class TrainedRecord(Strict):
    """The fields of a checkpoint's ``edgeprune`` record that loading uses."""

    method: Annotated[str, Field(min_length=1, max_length=200)]
    prune_locs: Annotated[list[Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=10_000)]
    keep_ratios: Annotated[
        list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]], Field(max_length=10_000)
    ]
    options: Annotated[dict[str, Option], Field(max_length=100)] = {}
    trained_for: dict | None = None

    def config(self, base: MethodConfig) -> MethodConfig:
        """The recorded schedule over ``base`` (the options read off the weights)."""
        return MethodConfig(
            tuple(self.prune_locs),
            tuple(float(r) for r in self.keep_ratios),
            {**base.options, **{k: _tuple(v) for k, v in self.options.items()}},
        )

    def note(self, path: Path) -> str:
        t = self.trained_for or {}
        aim = t.get("aim_ms")
        where = (
            f" for {aim:g} ms on {t.get('device', 'a device')}"
            if isinstance(aim, int | float)
            else ""
        )
        return f"{path.name}: schedule from its training record ({self.method}{where})"


def _tuple(v: Option) -> object:
    return tuple(v) if isinstance(v, list) else v


def read_record(raw: dict, path: Path | str) -> TrainedRecord:
    """Validate a checkpoint's ``edgeprune`` record (one-line error naming the field)."""
    return validate(TrainedRecord, raw, f"{path}: its edgeprune record is not valid")
