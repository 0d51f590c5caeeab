"""Safe checkpoint loading: weights_only=True, wrapper unwrapping, arch from shapes."""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from edgeprune.core.arch import Arch, arch_from_dims
from edgeprune.core.errors import EdgepruneError

WRAPPER_KEYS = ("model", "model_ema", "state_dict", "module")
REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight", "norm.weight")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a flat state_dict, refusing anything but tensors."""
    return load_checkpoint(path)[0]


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A checkpoint's flat state_dict and, where edgeprune's training wrote one, its
    ``edgeprune`` record (the schedule it was trained to; validated by the reader)."""
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
    except Exception as e:  # noqa: BLE001  (a damaged file fails anywhere in the reader)
        # zip and legacy readers alike: RuntimeError, EOFError, BadZipFile, struct.error,
        # IndexError ("pop from empty list"), KeyError, AssertionError ("storage key …
        # not found"), MemoryError (a size field made huge)… whichever the bytes lead to
        msg = " ".join(str(e).split())[:160]
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
        raise EdgepruneError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {msg})",
            "expected a file written by torch.save",
        ) from None
    record = obj.get("edgeprune") if isinstance(obj, Mapping) else None
    return unwrap(obj, path), dict(record) if isinstance(record, Mapping) else None


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
    _check_tensors(sd)
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
    pos = sd["pos_embed"]
    n = int(pos.shape[1]) - 1 if pos.ndim == 3 else -1
    grid = int(round(n**0.5)) if n > 0 else 0
    if grid < 1 or grid * grid != n or pos.shape[0] != 1 or pos.shape[-1] != c:
        raise EdgepruneError(f"pos_embed has shape {tuple(pos.shape)}, expected (1, 1+G*G, {c})")
    head, norm = sd["head.weight"], sd["norm.weight"]
    if head.ndim != 2 or head.shape[0] < 1 or head.shape[1] != c:
        raise EdgepruneError(f"head.weight has shape {tuple(head.shape)}, expected (classes, {c})")
    if tuple(norm.shape) != (c,):
        raise EdgepruneError(f"norm.weight has shape {tuple(norm.shape)}, expected ({c},)")
    depth = _depth(sd)
    return arch_from_dims(c, depth, patch, grid * patch, int(head.shape[0]), num_heads)


VIT_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "head.")


def _check_tensors(sd: Mapping[str, torch.Tensor]) -> None:
    """The ViT's weights are floating-point tensors, and no tensor is complex or boolean
    (none is a weight: loading would cast it silently)."""
    for k, v in sd.items():
        vit = k.startswith(VIT_PREFIXES)
        if (vit and not v.is_floating_point()) or v.is_complex() or v.dtype == torch.bool:
            raise EdgepruneError(
                f"{k} is a {str(v.dtype).replace('torch.', '')} tensor, not floating point",
                "expected a ViT state_dict of float weights",
            )


def _depth(sd: Mapping[str, torch.Tensor]) -> int:
    """The number of blocks: ``blocks.0`` … ``blocks.{depth-1}``, none missing."""
    found = set()
    for k in sd:
        if k.startswith("blocks."):
            index = k.split(".")[1]
            if not re.fullmatch(r"[0-9]{1,4}", index):
                raise EdgepruneError(f"unknown key layout: {k[:80]}", "expected blocks.N.* keys")
            found.add(int(index))
    if not found:
        raise EdgepruneError("unknown key layout: no blocks.N.* keys", "expected a timm ViT")
    depth = max(found) + 1
    if len(found) != depth:
        missing = min(set(range(depth)) - found)
        raise EdgepruneError(
            f"blocks.{missing}.* missing, but blocks up to blocks.{depth - 1} are there",
            "expected blocks.0 … blocks.N-1 of a timm ViT",
        )
    return depth


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
