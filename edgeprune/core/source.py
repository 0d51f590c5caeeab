"""SRC -> a loaded model: a checkpoint file or a built-in spec ``ARCH[:METHOD[@PARAM]]``.

Every command takes a SRC and the same overrides (--method, --keep, --locs, --heads)
and gets back one ``Source``: its spec, its TokenPlan and, on demand, the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeprune.core.arch import ARCHS, Arch, get_arch
from edgeprune.core.checkpoint import (
    arch_from_state_dict,
    load_checkpoint,
    load_into,
    non_finite_tensors,
)
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.flops import FlopReport, plan_flops
from edgeprune.core.methods import Method, MethodConfig, detect_method, get_method
from edgeprune.core.methods.avit import released_name_gates
from edgeprune.core.parsing import parse_floats, parse_ints
from edgeprune.core.plan import TokenPlan
from edgeprune.core.record import read_record

BUILTIN_RE = re.compile(r"^(?P<arch>[a-z_0-9]+)(?::(?P<method>[a-z_0-9]+)(?:@(?P<param>.+))?)?$")
BUILTIN_SEED = 0


@dataclass
class Source:
    """What a SRC resolved to."""

    text: str  # as the user wrote it
    kind: str  # "builtin" or "checkpoint"
    arch: Arch
    method: Method
    config: MethodConfig
    plan: TokenPlan
    state_dict: dict[str, torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    seed: int = BUILTIN_SEED  # of the random weights of a built-in spec
    # what edgeprune's training recorded it was trained for (budget, device, aim)
    trained_for: dict | None = None
    _model: torch.nn.Module | None = None

    @property
    def is_builtin(self) -> bool:
        return self.kind == "builtin"

    def flops(self) -> FlopReport:
        return plan_flops(self.plan, self.method.selector_macs(self.arch, self.plan))

    def model(self) -> torch.nn.Module:
        """The static PyTorch module in eval mode, weights loaded (or seeded random)."""
        if self._model is None:
            m = self.method.build(self.arch, self.plan)
            if self.state_dict is None:
                m.init_random(self.seed)  # the method's own layout (SPViT: tied heads)
            else:
                load_into(m, self.state_dict, f"checkpoint {self.text}")
            self._model = m.eval()
        return self._model

    def describe(self) -> dict:
        return {
            "source": self.text,
            "kind": self.kind,
            "random_weights": self.is_builtin,
            "arch": self.arch.to_dict(),
            "method": self.method.name,
            "prune_locs": list(self.config.prune_locs),
            "keep_ratios": list(self.config.keep_ratios),
            "options": dict(self.config.options),
        }

    def default_name(self) -> str:
        """The stem of default output names: the spec (``deit_s_dynamicvit_0.7``) or
        the checkpoint's file name."""
        if self.is_builtin:
            return self.text.replace(":", "_").replace("@", "_")
        return Path(self.text).stem

    def inspect(self) -> dict:
        """What ``edgeprune inspect`` reports: the description, the token plan, the
        parameter count and GFLOPs."""
        fl = self.flops()
        return {
            **self.describe(),
            "arch": self.arch.name,
            "arch_config": self.arch.to_dict(),
            "tokens_per_block": list(self.plan.tokens_per_block),
            "mlp_tokens_per_block": list(self.plan.mlp_tokens),
            "token_plan": self.plan.to_dict(),
            "params": sum(p.numel() for p in self.model().parameters()),
            "gflops": fl.to_dict(),
            "gflops_convention": "multiply-adds (DeiT/DynamicViT papers); selectors counted apart",
        }


def looks_like_path(text: str) -> bool:
    return (
        "/" in text
        or "\\" in text
        or text.endswith((".pt", ".pth", ".bin", ".ckpt", ".tar"))
        or Path(text).exists()
    )


def resolve(
    src: str,
    method: str | None = None,
    keep: str | tuple[float, ...] | None = None,
    locs: str | tuple[int, ...] | None = None,
    heads: int | None = None,
    method_options: dict[str, object] | None = None,
) -> Source:
    """Resolve a SRC and the command-line overrides into a Source (a budget file sets
    them instead through ``edgeprune.budget.file.resolve_with_budget``)."""
    keep_t = parse_floats(keep, "--keep") if isinstance(keep, str) else keep
    locs_t = parse_ints(locs, "--locs") if isinstance(locs, str) else locs
    if looks_like_path(src):
        return _from_checkpoint(src, method, keep_t, locs_t, heads, method_options)
    m = BUILTIN_RE.match(src.strip())
    if not m:
        raise EdgepruneError(
            f"'{src}' is neither an existing file nor a built-in spec",
            "give a checkpoint path or ARCH[:METHOD[@RATIO]], e.g. deit_small:dynamicvit@0.7",
        )
    if m["arch"] not in ARCHS:
        if m["method"] is None and "." in src:
            raise EdgepruneError(f"checkpoint {src} does not exist")
        raise EdgepruneError(
            f"unknown arch '{m['arch']}' in '{src}'", f"built-in archs: {', '.join(ARCHS)}"
        )
    arch = get_arch(m["arch"])
    if heads is not None and heads != arch.num_heads:
        raise EdgepruneError(f"--heads {heads} does not apply to built-in {arch.name}")
    meth_name = m["method"] or method or "dense"
    if method and m["method"] and method != m["method"]:
        raise EdgepruneError(f"--method {method} contradicts the spec's method '{m['method']}'")
    meth = get_method(meth_name)
    _check_options(meth, method_options)
    cfg = meth.config_from_param(m["param"], arch)
    cfg.options.update(method_options or {})
    cfg = meth.with_overrides(cfg, arch, keep_t, locs_t)
    plan = meth.token_plan(arch, cfg)
    return Source(
        src,
        "builtin",
        arch,
        meth,
        cfg,
        plan,
        notes=[f"built-in spec: random weights (seed {BUILTIN_SEED}), not a trained model"],
    )


def _check_options(meth: Method, options: dict[str, object] | None) -> None:
    flags = {"r": "--tome-r", "calibration": "--calibration"}
    unused = sorted(k for k in (options or {}) if k not in meth.user_options)
    if unused:
        names = ", ".join(flags.get(k, k) for k in unused)
        raise EdgepruneError(
            f"{names} does not apply to method '{meth.name}'",
            "drop it, or pick the method it is for",
        )


KEYLESS_HINT = (
    "methods without parameters of their own are chosen with --method: "
    "--method avit (with --calibration FILE), --method evit or --method tome"
)


def _keyless_notes(path: Path, detected: Method, method: str | None) -> list[str]:
    """What to tell the user when a checkpoint holds no pruning-method keys."""
    if detected.key_prefix is not None or (method is not None and method != "dense"):
        return []
    gates = released_name_gates(path)
    if method is None and gates is not None:
        return [
            f"{path.name}: plain DeiT keys, named as the released A-ViT checkpoints "
            f"([model]-[scale]-[center].pth): read as A-ViT with gate_scale {gates[0]:g}, "
            f"gate_center {gates[1]:g} (--method dense for the unpruned model)"
        ]
    return [f"{path.name} holds no pruning-method keys: read as dense; {KEYLESS_HINT}"]


def _from_checkpoint(
    src: str,
    method: str | None,
    keep: tuple[float, ...] | None,
    locs: tuple[int, ...] | None,
    heads: int | None,
    method_options: dict[str, object] | None,
) -> Source:
    path = Path(src)
    sd, raw_record = load_checkpoint(path)
    arch = arch_from_state_dict(sd, heads)
    detected = detect_method(list(sd))
    record = read_record(raw_record, path) if raw_record is not None else None
    if method is None and record is not None:
        method = record.method
    if method is not None:
        meth = get_method(method)
        if meth.name != detected.name and (meth.key_prefix is not None or detected.key_prefix):
            raise EdgepruneError(
                f"{src} looks like a {detected.name} checkpoint, not {meth.name}",
                f"drop --method or pass --method {detected.name}",
            )
    else:
        meth = detected
    notes = _keyless_notes(path, detected, method)
    if notes and method is None and released_name_gates(path) is not None:
        meth = get_method("avit")
    bad = non_finite_tensors(sd)
    if bad:
        raise EdgepruneError(
            f"{src} has NaN/Inf values in {len(bad)} tensor(s) (e.g. {bad[0]})",
            "a model with non-finite weights cannot be exported or measured meaningfully",
        )
    _check_options(meth, method_options)
    cfg = meth.config_from_checkpoint(sd, arch, path)
    if record is not None and record.method == meth.name:
        cfg = record.config(cfg)
        notes = [*notes, record.note(path)]
    cfg.options.update(method_options or {})
    cfg = meth.with_overrides(cfg, arch, keep, locs)
    plan = meth.token_plan(arch, cfg)
    src_obj = Source(src, "checkpoint", arch, meth, cfg, plan, state_dict=sd, notes=notes)
    src_obj.trained_for = record.trained_for if record is not None else None
    src_obj.model()  # load now, so a layout/shape problem is reported before any work
    return src_obj
