"""The pieces of a ViT that a latency table times, each a standalone module at a fixed
shape, and their ONNX export (static shapes, as the deployed graph has them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from edgeprune.core.arch import Arch
from edgeprune.core.models.deit import Block, VisionTransformer, init_random_
from edgeprune.export.onnx import trace_to_onnx
from edgeprune.export.targets import get_target

PIECE_SEED = 0


class HalfBlock(nn.Module):
    """One residual half of a block: ``x + fn(norm(x))``. ``attn_half`` is norm1 +
    attention (what EViT/ToMe see before they reduce tokens mid-block), ``mlp_half``
    norm2 + MLP."""

    def __init__(self, norm: nn.Module, fn: nn.Module):
        super().__init__()
        self.norm, self.fn = norm, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.norm(x))


def attn_half(block: Block) -> HalfBlock:
    return HalfBlock(block.norm1, block.attn)


def mlp_half(block: Block) -> HalfBlock:
    return HalfBlock(block.norm2, block.mlp)


class Embed(nn.Module):
    """Patch embedding + CLS token + position embedding."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.vit.embed(img)


class Head(nn.Module):
    """Final norm + classifier on the CLS token."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.norm, self.head = vit.norm, vit.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)[:, 0])


@dataclass(frozen=True)
class Piece:
    """One thing to time: which table, at how many tokens, and how to build it."""

    table: str  # block | attn | mlp | embed | head | selector
    tokens: int | None
    module: nn.Module
    input_shape: tuple[int, ...]
    repeat: int = 1  # the module runs this many copies in a chain; time is divided by it

    def onnx(self, opset: int = 17) -> bytes:
        return module_to_onnx(self.module, self.input_shape, opset)

    def artifact(self, target: str = "onnx") -> bytes:
        """The piece as ``target``'s artifact (the runtime's ``Runtime.target``)."""
        if target == "onnx":
            return self.onnx()
        return lower_module(self.module, self.input_shape, target)


def make_block(arch: Arch, seed: int = PIECE_SEED) -> Block:
    b = Block(arch.embed_dim, arch.num_heads, arch.mlp_hidden)
    init_random_(b, seed)
    return b.eval()


def make_chain(arch: Arch, table: str, n: int) -> nn.Module:
    """``n`` blocks (or block halves) with distinct weights, run one after another.

    One block timed alone keeps its weights in the CPU caches, which a whole model
    does not: timed alone, a DeiT block came out at about half its cost inside the
    model. A chain of distinct blocks streams weights as the model does."""
    blocks = [make_block(arch, PIECE_SEED + i) for i in range(n)]
    wrap = {"block": lambda b: b, "attn": attn_half, "mlp": mlp_half}[table]
    return nn.Sequential(*(wrap(b) for b in blocks)).eval()


def make_vit(arch: Arch) -> VisionTransformer:
    """A depth-0 ViT: only embed and head are used, so no blocks are built."""

    return VisionTransformer(replace(arch, depth=0)).init_random(PIECE_SEED).eval()


def module_to_onnx(module: nn.Module, input_shape: tuple[int, ...], opset: int = 17) -> bytes:
    """A piece traced at one fixed input shape by the exporter's own tracer
    (``trace_to_onnx``: every dimension a constant); its output is named ``output``."""

    return trace_to_onnx(module, input_shape, opset, output_name="output")


def lower_module(module: nn.Module, input_shape: tuple[int, ...], target: str) -> bytes:
    """``module`` at one fixed input shape as export target ``target``'s artifact."""

    return get_target(target).module_artifact(module, input_shape)
