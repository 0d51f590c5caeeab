"""A PNG of a latency table: latency vs tokens per curve (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path

from edgeprune.atomic import atomic_path
from edgeprune.latency_table import LatencyTable


def plot_path(table_path: Path) -> Path:
    return Path(table_path).with_suffix(".png")


def plot_table(table: LatencyTable, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    curves = {"block": table.block, "attn": table.attn, "mlp": table.mlp}
    curves.update({f"selector ({k})": v for k, v in table.selectors.items()})
    for name, c in curves.items():
        if c is not None:
            ax.plot(c.tokens, c.median_ms, marker="o", ms=3, label=f"{name} median")
            if name == "block":
                ax.fill_between(c.tokens, c.median_ms, c.p90_ms, alpha=0.2, label="block p50–p90")
    dev = table.device
    ax.set_title(
        f"{table.arch.name} on {dev['name']} ({dev['runtime']} {dev.get('runtime_version', '')}, "
        f"{dev.get('precision', '')}, {dev['threads']} threads, batch {table.batch})",
        fontsize=9,
    )
    ax.set_xlabel("tokens")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(
        0.01,
        0.01,
        f"embed {table.embed.median_ms:.3f} ms · head {table.head.median_ms:.3f} ms",
        fontsize=7,
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
