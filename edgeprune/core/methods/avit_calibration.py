"""A-ViT calibration (``edgeprune calibrate``): the released masked model as a
reference, the token counts it runs per block on calibration images, and how close
the zipped static model comes to it. The counts feed ``--calibration`` (the file
format is read by ``avit.load_calibration``)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from edgeprune.core.arch import Arch
from edgeprune.core.atomic import Output, check_outputs, write_json_atomic
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import load_images
from edgeprune.core.methods.avit import (
    CALIBRATION_FORMAT,
    EPS,
    MASK_BIAS,
    AViT,
    halting,
    schedule_from_counts,
)
from edgeprune.core.methods.base import MethodConfig
from edgeprune.core.models.deit import VisionTransformer
from edgeprune.core.source import resolve

RANDOM_SEED = 0


def masked_forward(
    model: VisionTransformer, img: torch.Tensor, scale: float, center: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The released (masked) A-ViT inference, in our own code.
    Returns (logits B×classes, running tokens entering each block B×depth)."""
    x = model.embed(img)
    b, n, _ = x.shape
    c = torch.zeros(b, n)
    rem = torch.ones(b, n)
    run = torch.ones(b, n)
    out = torch.zeros_like(x)
    counts = []
    depth = len(model.blocks)
    for i, blk in enumerate(model.blocks):
        counts.append(run.sum(dim=1))
        m = run.unsqueeze(-1)
        x = x * m
        bias = ((1.0 - run) * MASK_BIAS).view(b, 1, 1, n)
        q, k, v = blk.attn.qkv_heads(blk.norm1(x * m) * m)
        o, _ = blk.attn.attend(q, k, v, bias)
        x = x + blk.attn.proj(o)
        x = x + blk.mlp(blk.norm2(x * m) * m)
        h = torch.ones(b, n) if i == depth - 1 else halting(x, scale, center)
        c = c + h
        reached = (c > 1 - EPS).float() * run
        not_reached = (c < 1 - EPS).float()
        out = out + x * m * (rem * reached + h * not_reached).unsqueeze(-1)
        rem = rem - not_reached * h
        run = (c < 1 - EPS).float()
    return model.head(model.norm(out)[:, 0]), torch.stack(counts, dim=1)


def calibrate(
    model: VisionTransformer,
    images: torch.Tensor,
    arch: Arch,
    scale: float,
    center: float,
    quantile: float,
    *,
    batch: int = 16,
) -> dict:
    """Run the masked model, record running tokens per block, choose counts at the
    quantile (rounded up), and compare the zipped model with the masked one."""
    if not 0 < quantile <= 1:
        raise EdgepruneError(f"--quantile {quantile} is outside (0, 1]")
    logits, counts = [], []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            lg, ct = masked_forward(model, images[i : i + batch], scale, center)
            logits.append(lg)
            counts.append(ct)
    masked = torch.cat(logits)
    running = torch.cat(counts)  # images × depth
    q = torch.quantile(running, quantile, dim=0, interpolation="higher")
    chosen = [int(math.ceil(v)) for v in q.tolist()]
    chosen = [max(2, min(arch.num_tokens, k)) for k in chosen]
    for b in range(1, len(chosen)):
        chosen[b] = min(chosen[b], chosen[b - 1])
    chosen[0] = arch.num_tokens
    method = AViT()
    opts = {"gate_scale": scale, "gate_center": center}
    locs, keep = schedule_from_counts(chosen, arch.num_patches)
    plan = method.token_plan(arch, MethodConfig(locs, keep, opts))
    zipped_model = method.build(arch, plan)
    zipped_model.load_state_dict(model.state_dict(), strict=False)
    zipped_model.eval()
    with torch.no_grad():
        zipped = torch.cat(
            [zipped_model(images[i : i + batch]) for i in range(0, images.shape[0], batch)]
        )
    return {
        "format": CALIBRATION_FORMAT,
        "version": 1,
        "arch": arch.name,
        "gate_scale": scale,
        "gate_center": center,
        "eps": EPS,
        "quantile": quantile,
        "inputs": int(images.shape[0]),
        "counts": chosen,
        "running_tokens_mean": [round(v, 2) for v in running.mean(dim=0).tolist()],
        "report": {
            "inputs": int(images.shape[0]),
            "top1_agreement": float((zipped.argmax(-1) == masked.argmax(-1)).float().mean()),
            "max_logit_diff": float((zipped - masked).abs().max()),
        },
    }


def calibration_inputs(arch: Arch, images: Path | None, random: int | None) -> torch.Tensor:
    """The calibration images: a folder of PNG/JPEG files, or N seeded random images."""
    if (images is None) == (random is None):
        raise EdgepruneError("give exactly one of --images DIR or --random N")
    if images is not None:
        if not images.is_dir():
            raise EdgepruneError(f"--images {images} is not a folder")
        return load_images(images, arch.img_size)
    if random < 1:
        raise EdgepruneError(f"--random {random} must be at least 1")
    g = torch.Generator().manual_seed(RANDOM_SEED)
    return torch.randn(random, 3, arch.img_size, arch.img_size, generator=g)


def calibrate_source(
    src: str,
    out: Path,
    *,
    images: Path | None = None,
    random: int | None = None,
    quantile: float = 1.0,
    gate_scale: float | None = None,
    gate_center: float | None = None,
    heads: int | None = None,
    force: bool = False,
):
    """Calibrate the A-ViT model ``src`` and write the calibration JSON to ``out``
    (atomically). Gates default to the model's (its checkpoint name, else the released
    ones). Returns (the resolved source, the calibration data)."""

    if (images is None) == (random is None):
        raise EdgepruneError("give exactly one of --images DIR or --random N")
    check_outputs({"--out": Output(Path(out), ".json")}, {"SRC": src, "--images": images}, force)
    source = resolve(src, method="avit", heads=heads)
    imgs = calibration_inputs(source.arch, images, random)
    opts = source.config.options
    scale = float(gate_scale if gate_scale is not None else opts["gate_scale"])
    center = float(gate_center if gate_center is not None else opts["gate_center"])
    data = calibrate(source.model(), imgs, source.arch, scale, center, quantile)
    data["source"] = src
    write_json_atomic(out, data)
    return source, data
