"""Tables for the latency tests.

``measure_table``: a REAL latency table, measured here with onnxruntime on one
DeiT block at a handful of token counts, the embedding, the head and the method's
selector (a quick sweep, few runs: measured, but coarse). ``synthetic_table``: a
made-up table, marked ``measured: false``, for pure-math tests.
"""

from __future__ import annotations

import platform

import numpy as np
import torch
from torch import nn

from edgeprune.arch import Arch, get_arch
from edgeprune.latency_table import Curve, EndToEnd, LatencyTable, Point
from edgeprune.methods import get_method
from edgeprune.pieces import Embed, Head, make_chain, make_vit, module_to_onnx
from edgeprune.plan import SelectorStage
from edgeprune.runtimes.onnxruntime import make_session, version
from edgeprune.runtimes.timing import time_interleaved


def measure_table(
    arch: Arch | str = "deit_tiny",
    method: str = "dynamicvit",
    block_tokens: tuple[int, ...] = (1, 25, 50, 75, 100, 125, 150, 175, 197),
    selector_tokens: tuple[int, ...] = (20, 60, 100, 150, 197),
    threads: int = 1,
    rounds: int = 20,
    batch: int = 1,
    chain: int = 4,
) -> LatencyTable:
    """``chain``: blocks are timed as a chain of that many blocks with distinct weights
    (divided by ``chain``), so their weights stream through the caches as in the whole
    model; one block timed alone keeps its weights cache-hot and reads ~2x fast here."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    c = arch.embed_dim
    meth = get_method(method)
    vit = make_vit(arch)
    blk = make_chain(arch, "block", chain)
    mods: list[tuple[str, nn.Module, torch.Tensor]] = []
    for n in block_tokens:
        mods.append((f"block{n}", blk, torch.randn(batch, n, c)))
    sel_tokens = [n for n in selector_tokens if n >= 3]
    for n in sel_tokens:
        stage = SelectorStage(0, "pre", n, max(2, int(0.7 * (n - 1)) + 1))
        sm = meth.selector_module(arch, stage)
        if sm is not None:
            mods.append((f"sel{n}", sm, torch.randn(batch, n, c)))
    img = torch.randn(batch, 3, arch.img_size, arch.img_size)
    mods.append(("embed", Embed(vit), img))
    mods.append(("head", Head(vit), torch.randn(batch, arch.num_tokens, c)))
    sessions = [make_session(module_to_onnx(m, tuple(x.shape)), threads) for _, m, x in mods]
    timings = time_interleaved(sessions, [x.numpy() for _, _, x in mods], rounds=rounds)
    t = {name: tm for (name, _, _), tm in zip(mods, timings, strict=True)}

    def curve(prefix: str, ns, div: int = 1) -> Curve:
        return Curve(
            tuple(ns),
            tuple(t[f"{prefix}{n}"].median_ms / div for n in ns),
            tuple(t[f"{prefix}{n}"].p90_ms / div for n in ns),
        )

    selectors = {}
    if any(name.startswith("sel") for name in t):
        selectors[meth.name] = curve("sel", sel_tokens)
    return LatencyTable(
        device={
            "name": "cpu",
            "runtime": "onnxruntime",
            "runtime_version": version(),
            "precision": "fp32",
            "threads": threads,
            "host": platform.node(),
            "fingerprint": platform.processor() or platform.machine(),
        },
        arch=arch,
        method=meth.name,
        batch=batch,
        date="test",
        measured=True,
        block=curve("block", block_tokens, chain),
        embed=Point(t["embed"].median_ms, t["embed"].p90_ms),
        head=Point(t["head"].median_ms, t["head"].p90_ms),
        selectors=selectors,
        extra={"note": f"quick test sweep, {rounds} interleaved rounds, chains of {chain}"},
    )


def synthetic_table(
    arch: str = "deit_tiny",
    method: str | None = "dynamicvit",
    split: bool = False,
    e2e: tuple[float, float] | None = None,
) -> LatencyTable:
    """Made-up numbers (measured: false): a block that costs a + b·n + c·n² ms; with
    ``e2e`` = (offset, scale), an end-to-end correction as a profile's anchors give."""
    a = get_arch(arch)
    ns = (1, 50, 100, 150, 197)

    def cv(a0: float, b: float, c2: float) -> Curve:
        ys = tuple(a0 + b * n + c2 * n * n for n in ns)
        return Curve(ns, ys, tuple(1.1 * y for y in ys))

    return LatencyTable(
        device={"name": "synthetic", "runtime": "none", "threads": 1},
        arch=a,
        method=method,
        batch=1,
        date="synthetic",
        measured=False,
        block=cv(0.05, 0.004, 1e-5),
        embed=Point(0.3, 0.33),
        head=Point(0.05, 0.06),
        attn=cv(0.03, 0.0015, 1e-5) if split else None,
        mlp=cv(0.02, 0.0025, 0.0) if split else None,
        selectors={method: cv(0.02, 0.001, 0.0)} if method else {},
        e2e=EndToEnd((), *e2e) if e2e else None,
        extra={"note": "synthetic numbers for tests, not a measurement"},
    )


def rng_ratios(seed: int, n: int = 3) -> tuple[float, ...]:
    r = np.sort(np.random.default_rng(seed).uniform(0.1, 1.0, n))[::-1]
    return tuple(round(float(x), 3) for x in r)
