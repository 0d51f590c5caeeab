"""The training run's PNG: loss per step, predicted latency against the aim, and the
keep schedule read after every epoch (from the run's log lines; imports no job)."""

from __future__ import annotations

from pathlib import Path

from edgeprune.render.plots import _pyplot, _save


def plot_training(history: list[dict], aim_ms: float, path: Path) -> Path:
    """``history``: the JSONL log's lines (steps, and epoch summaries with
    ``epoch_end``)."""
    steps = [ln for ln in history if not ln.get("epoch_end")]
    ends = [ln for ln in history if ln.get("epoch_end")]
    fig, (a, b, c) = _pyplot().subplots(1, 3, figsize=(13, 4), dpi=100)
    a.plot([ln["step"] for ln in steps], [ln["loss"] for ln in steps], lw=1, label="total")
    if steps and "ce" in steps[0]:
        a.plot([ln["step"] for ln in steps], [ln["ce"] for ln in steps], lw=1, label="CE")
    a.set(xlabel="step", ylabel="loss", title="loss")
    a.legend(fontsize=8)
    pm = [(ln["step"], ln["predicted_ms"]) for ln in steps if "predicted_ms" in ln]
    if pm:
        b.plot(*zip(*pm, strict=True), lw=1, label="training masks")
    if ends:
        last = [max(ln["step"] for ln in steps if ln["epoch"] == e["epoch"]) for e in ends if steps]
        b.plot(
            last, [e["predicted_ms"] for e in ends][: len(last)], "o-", label="schedule read out"
        )
    b.axhline(aim_ms, color="k", ls="--", lw=1, label=f"aim {aim_ms:.2f} ms")
    b.set(xlabel="step", ylabel="predicted ms", title="predicted latency")
    b.legend(fontsize=8)
    for s in range(max((len(e["schedule"]["keep_ratios"]) for e in ends), default=0)):
        c.plot([e["epoch"] for e in ends], [e["schedule"]["keep_ratios"][s] for e in ends],
               "o-", label=f"stage {s + 1}")  # fmt: skip
    c.set(xlabel="epoch", ylabel="keep ratio", title="keep schedule", ylim=(0, 1.05))
    if ends and ends[0]["schedule"]["keep_ratios"]:
        c.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
