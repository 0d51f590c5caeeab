"""What a run trains toward, and the model it starts from.

The target is a budget file (its method, schedule, latency table and aim: the target
minus its margin, in the table's terms) or a latency table with ``--target-ms``. The
latency-aware sparsity loss aims at the aim, not at the target. A budget no schedule of
the method can reach on that table is refused here, before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeprune.accuracy.evaluate import dense_backbone
from edgeprune.budget.file import load_budget, resolve_with_budget
from edgeprune.core.atomic import sha256_file
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.methods import Method, MethodConfig, get_method
from edgeprune.core.source import Source, resolve
from edgeprune.latency.model import LatencyModel, load_model
from edgeprune.training.forms import TrainingForm, get_form


@dataclass(kw_only=True)
class Target:
    """The schedule to train to and the latency to aim at (in the table's terms)."""

    source: Source  # SRC, at the budget's schedule where a budget is given
    method: Method
    config: MethodConfig  # the budget's schedule (what a fixed-schedule form trains at)
    latency: LatencyModel
    aim_ms: float
    target_ms: float
    trained_for: dict  # recorded in the checkpoint and the exported manifest

    @property
    def form(self) -> type[TrainingForm]:
        return get_form(self.method.name)


def from_budget(src: str, budget: Path, heads: int | None) -> Target:
    """SRC at the budget's method and schedule; the aim from the budget file."""
    if not Path(budget).exists():
        raise EdgepruneError(f"budget file {budget} does not exist")
    b = load_budget(budget)
    source, meth, config = _at_budget(src, Path(budget), b, heads)
    latency = b.latency_model()
    aim = b.aim_ms
    where = {"budget": str(budget), "budget_sha256": sha256_file(Path(budget))}
    return Target(
        source=source, method=meth, config=config, latency=latency,
        aim_ms=b.table_aim_ms, target_ms=b.table_target_ms,
        trained_for=_trained_for(where, latency, b.target_ms, aim, b.table_aim_ms),
    )  # fmt: skip


def _trained_for(where: dict, latency: LatencyModel, target: float, aim: float, table_aim: float):
    """What the checkpoint and the exported manifest record the model was trained for."""
    device = latency.table.device
    return {**where, "device": str(device.get("name", "?")),
            "runtime": str(device.get("runtime", "?")), "target_ms": target, "aim_ms": aim,
            "table_aim_ms": table_aim}  # fmt: skip


def _at_budget(src: str, path: Path, b, heads: int | None) -> tuple[Source, Method, MethodConfig]:
    """(SRC, the budget's method, its schedule). A dense SRC for a method with
    parameters of its own (DynamicViT, SPViT) stays dense: its selectors are new."""
    meth = get_method(b.method)
    plain = resolve(src, heads=heads)
    if plain.method.name != "dense" or meth.key_prefix is None:
        source = resolve_with_budget(src, path, heads=heads)
        return source, source.method, source.config
    if plain.arch.name != b.arch:  # a custom arch's shape is checked against the table
        raise EdgepruneError(
            f"budget {path} is for {b.arch}, but {src} is {plain.arch.name}",
            f"use a {b.arch} model or a budget made for {plain.arch.name}",
        )
    cfg = MethodConfig(tuple(b.locs), tuple(b.keep_ratios), {})
    meth.validate(cfg, plain.arch)
    return plain, meth, cfg


def from_table(src: str, table: Path, target_ms: float, method: str | None, locs, heads) -> Target:
    """SRC (its method, or ``method`` for a dense SRC) aiming at ``target_ms`` on a
    latency table (no margin: the target is the aim)."""
    if not Path(table).exists():
        raise EdgepruneError(f"latency table {table} does not exist")
    source = resolve(src, heads=heads)
    if source.method.name == "dense":
        if method is None:
            raise EdgepruneError(
                f"{src} is dense: name the method to train", "give --method or --budget"
            )
        meth = get_method(method)
        config = meth.with_overrides(meth.default_config(source.arch), source.arch, None, locs)
    else:
        if method is not None and method != source.method.name:
            raise EdgepruneError(f"--method {method} contradicts {src}'s {source.method.name}")
        meth = source.method
        config = meth.with_overrides(source.config, source.arch, None, locs)
    if not get_form(meth.name).learns_schedule:
        raise EdgepruneError(
            f"{meth.name} trains at a fixed schedule, which a budget picks",
            f"run 'edgeprune budget --method {meth.name}' and pass --budget",
        )
    latency = load_model(table)
    where = {"table": str(table), "table_sha256": sha256_file(Path(table))}
    return Target(
        source=source, method=meth, config=config, latency=latency, aim_ms=target_ms,
        target_ms=target_ms,
        trained_for=_trained_for(where, latency, target_ms, target_ms, target_ms),
    )  # fmt: skip


def check_reachable(target: Target, floor_ms: float) -> None:
    """Refuse an aim below the fastest the method can be on this table (``floor_ms``:
    one patch token kept at every stage) before any training."""
    if floor_ms > target.aim_ms:
        raise EdgepruneError(
            f"no {target.method.name} schedule reaches {target.aim_ms:.3f} ms on this table: "
            f"keeping one token per stage is predicted at {floor_ms:.3f} ms",
            "raise the target, or budget fewer stages later in the network",
        )


def student(target: Target, seed: int) -> tuple[nn.Module, bool]:
    """The static model to train and whether its selectors are new: a checkpoint of the
    method itself continues from its selectors; otherwise the method's model at the
    form's start configuration, the backbone's weights loaded, new selectors."""
    src, meth, form = target.source, target.method, target.form
    own = (
        src.kind == "checkpoint"
        and meth.key_prefix is not None
        and any(k.startswith(meth.key_prefix) for k in (src.state_dict or {}))
    )
    if own:
        return src.model(), False
    cfg = form.start_config(target.config, target.source.arch.num_patches)
    torch.manual_seed(seed)
    model = meth.build(src.arch, meth.token_plan(src.arch, cfg))
    backbone = dense_backbone(src).state_dict()
    missing = model.load_state_dict(backbone, strict=False).missing_keys
    form.init_selectors_(model, seed)
    return model, bool(missing)
