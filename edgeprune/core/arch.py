"""The DeiT family: the architectures edgeprune knows by name."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeprune.core.errors import EdgepruneError


@dataclass(frozen=True)
class Arch:
    name: str
    embed_dim: int
    num_heads: int
    depth: int = 12
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    in_chans: int = 3

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block: patches plus the CLS token."""
        return self.num_patches + 1

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)


ARCHS: dict[str, Arch] = {
    "deit_tiny": Arch("deit_tiny", embed_dim=192, num_heads=3),
    "deit_small": Arch("deit_small", embed_dim=384, num_heads=6),
    "deit_base": Arch("deit_base", embed_dim=768, num_heads=12),
}

# embed dim -> heads, for checkpoints whose arch is read from tensor shapes
HEADS_BY_DIM = {a.embed_dim: a.num_heads for a in ARCHS.values()}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise EdgepruneError(
            f"unknown arch '{name}'", f"expected one of: {', '.join(ARCHS)}"
        ) from None


def arch_from_dims(
    embed_dim: int,
    depth: int,
    patch_size: int,
    img_size: int,
    num_classes: int,
    num_heads: int | None = None,
) -> Arch:
    """The arch of a checkpoint, named after the DeiT model it matches (or 'custom')."""

    heads = num_heads or HEADS_BY_DIM.get(embed_dim)
    if heads is None:
        raise EdgepruneError(
            f"cannot tell the number of heads for embed dim {embed_dim}",
            "pass --heads N (DeiT-T/S/B have embed 192/384/768 with 3/6/12 heads)",
        )
    if embed_dim % heads:
        raise EdgepruneError(f"embed dim {embed_dim} is not divisible by {heads} heads")
    name = "custom"
    for a in ARCHS.values():
        if (a.embed_dim, a.depth, a.patch_size, a.img_size, a.num_heads) == (
            embed_dim,
            depth,
            patch_size,
            img_size,
            heads,
        ):
            name = a.name
    return Arch(name, embed_dim, heads, depth, patch_size, img_size, 4.0, num_classes)
