"""Safe checkpoint loading: weights_only=True, wrapper unwrapping, arch from shapes."""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from edgeprune.core.arch import Arch, arch_from_dims
from edgeprune.core.errors import EdgepruneError

WRAPPER_KEYS = ("model", "model_ema", "state_dict", "module")
REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight", "norm.weight")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a flat state_dict, refusing anything but tensors."""
    path = Path(path)
    if not path.exists():
        raise EdgepruneError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise EdgepruneError(f"checkpoint {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise EdgepruneError(f"checkpoint {path} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _weights_only_detail(str(e))
        if "global" in detail.lower() or _pickle_imports_objects(path):
            raise EdgepruneError(
                f"refused to load {path}: it holds Python objects, not only tensors ({detail})",
                "edgeprune loads checkpoints with weights_only=True and never runs code from them",
            ) from None
        raise EdgepruneError(
            f"{path} is not a readable PyTorch checkpoint ({detail})",
            "expected a file written by torch.save",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = " ".join(str(e).split())[:160] or type(e).__name__
        raise EdgepruneError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {msg})"
        ) from None
    return unwrap(obj, path)


def _weights_only_detail(message: str) -> str:
    m = re.search(
        r"WeightsUnpickler error:\s*(.+?)(?:\n\n|Check the documentation|$)", message, re.S
    )
    text = m.group(1) if m else message
    return " ".join(text.split())[:160]


def _pickle_imports_objects(path: Path, limit: int = 64 << 20) -> bool:
    """Does a plain pickle file import globals or call them? Parsed, never executed."""

    try:
        data = path.read_bytes()[:limit]
        for op, _arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ"):
                return True
    except Exception:
        return False
    return False


def unwrap(obj: object, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept {"model": sd}, {"model_ema": sd}, {"state_dict": sd} or a bare state_dict;
    strip DataParallel's ``module.`` prefix."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and any(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise EdgepruneError(
            f"{path} holds no state_dict (found {type(obj).__name__})",
            "expected a dict of tensors, or one under 'model', 'model_ema' or 'state_dict'",
        )
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        found = ", ".join(list(map(str, obj.keys()))[:6])
        raise EdgepruneError(
            f"{path} holds no tensors at its top level (keys: {found})",
            "expected a dict of tensors, or one under 'model', 'model_ema' or 'state_dict'",
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def arch_from_state_dict(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> Arch:
    missing = [k for k in REQUIRED if k not in sd]
    if missing:
        sample = ", ".join(list(sd)[:5])
        raise EdgepruneError(
            f"unknown key layout: missing {', '.join(missing)} (found keys like {sample})",
            "expected a timm/DeiT ViT state_dict (cls_token, pos_embed, patch_embed.proj, "
            "blocks.N.*, norm, head)",
        )
    if "dist_token" in sd:
        raise EdgepruneError(
            "distilled DeiT (dist_token) is not supported", "use the non-distilled checkpoint"
        )
    cls = sd["cls_token"]
    if cls.ndim != 3 or cls.shape[:2] != (1, 1):
        raise EdgepruneError(f"cls_token has shape {tuple(cls.shape)}, expected (1, 1, C)")
    c = int(cls.shape[-1])
    w = sd["patch_embed.proj.weight"]
    if w.ndim != 4 or w.shape[0] != c or w.shape[2] != w.shape[3]:
        raise EdgepruneError(
            f"patch_embed.proj.weight has shape {tuple(w.shape)}, expected ({c}, 3, P, P)"
        )
    patch = int(w.shape[-1])
    n = int(sd["pos_embed"].shape[1]) - 1
    grid = int(round(n**0.5))
    if grid * grid != n or sd["pos_embed"].shape[-1] != c:
        raise EdgepruneError(
            f"pos_embed has shape {tuple(sd['pos_embed'].shape)}, expected (1, 1+G*G, {c})"
        )
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    if not blocks:
        raise EdgepruneError("unknown key layout: no blocks.N.* keys", "expected a timm ViT")
    depth = max(blocks) + 1
    return arch_from_dims(c, depth, patch, grid * patch, int(sd["head.weight"].shape[0]), num_heads)


def load_into(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) with a one-line account of what did not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if wrong:
        problems.append(f"{len(wrong)} with wrong shape (e.g. {wrong[0]})")
    if problems:
        raise EdgepruneError(
            f"{what} does not fit the model: " + "; ".join(problems),
            "check --method/--heads, or the checkpoint's architecture",
        )
    model.load_state_dict(sd, strict=True)


def non_finite_tensors(sd: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
