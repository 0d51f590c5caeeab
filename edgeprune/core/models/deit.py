"""DeiT with timm's parameter names, so timm/DeiT checkpoints load with strict=True.

Attention is written out (matmul, softmax, matmul) rather than fused: it exports to
plain ONNX ops at any opset, and methods such as EViT read the attention matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.core.arch import Arch


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B, N, C


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each B, H, N, D

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax attention; returns (output B×N×C before proj, attention B×H×N×N)."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        out = attn @ v
        b, h, n, d = out.shape
        return out.transpose(1, 2).reshape(b, n, h * d), attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attend(*self.qkv_heads(x))
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Dense DeiT (no distillation token). Parameter names follow timm."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        c = arch.embed_dim
        self.patch_embed = PatchEmbed(arch.patch_size, arch.in_chans, c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, arch.num_tokens, c))
        self.blocks = nn.ModuleList(
            Block(c, arch.num_heads, arch.mlp_hidden) for _ in range(arch.depth)
        )
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.head = nn.Linear(c, arch.num_classes)

    def init_random(self, seed: int = 0) -> VisionTransformer:
        """Deterministic random weights (for built-in specs with no checkpoint)."""
        init_random_(self, seed)
        return self

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat((cls, x), dim=1) + self.pos_embed

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)[:, 0])

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img)
        for blk in self.blocks:
            x = blk(x)
        return self.classify(x)


def init_random_(module: nn.Module, seed: int = 0) -> None:
    """Seeded random weights that keep activations O(1): std 1/sqrt(fan_in) for
    matrices, LayerNorm weights near 1, small biases and embeddings."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in module.named_parameters():
            if p.ndim in (2, 4):  # Linear and Conv2d weights
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * fan_in**-0.5)
            elif p.ndim == 1 and _name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


class _GatherRows(torch.autograd.Function):
    """Row gather that exports as one ONNX ``GatherND(batch_dims=1)`` on a B×K×1 index.

    ``torch.gather`` exports as GatherElements on an index expanded to B×K×C (Unsqueeze,
    Expand, GatherElements): an index per element, C times the work of copying rows.
    On ONNX Runtime CPU (1 thread, DeiT-T, 196 → 120 tokens) that is 28 µs against
    7 µs for GatherND, ~42 µs / 236 µs at batch 8. GatherND with batch_dims=1 keeps
    any batch size (static or the symbolic one of ``--dynamic-batch``) with no index
    arithmetic; TensorRT and CoreML both take it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return _gather_rows(x, idx)

    @staticmethod
    def symbolic(g, x, idx):
        if idx.type().dim() == 3:  # already B×K×1
            return g.op("GatherND", x, idx, batch_dims_i=1)
        axes = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64))
        return g.op("GatherND", x, g.op("Unsqueeze", idx, axes), batch_dims_i=1)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if idx.dim() == 2:
        idx = idx.unsqueeze(-1)
    return torch.gather(x, 1, idx.expand(-1, -1, x.shape[-1]))


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x: B×N×C, idx: B×K or B×K×1 (int64) -> B×K×C, rows in the order of ``idx``.

    Eager, torch.export (CoreML) and training: ``torch.gather``. ONNX export: one
    GatherND with batch_dims=1 (see ``_GatherRows``)."""
    if torch.onnx.is_in_onnx_export():
        return _GatherRows.apply(x, idx)
    return _gather_rows(x, idx)
