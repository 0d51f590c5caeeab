"""Each method fine-tuned to a budget on the tests' tiny model: predicted latency at the
start and at the end against the budget's aim (issue 31's closing table).

    python benchmarks/finetune_methods.py [--epochs 2] [--name finetune_methods]

The setting of tests/test_finetune_methods.py (a synthetic table per method, a budget
at 3 ms with a 5 % margin, 4 classes × 32 synthetic images, 2 epochs, the per-method
learning rate and batch there), on one process. Writes benchmarks/results/<name>.json
and .md. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from timing import host_meta, write_results  # noqa: E402

from edgeprune.training.data import Recipe  # noqa: E402
from edgeprune.training.finetune import FinetuneRequest, finetune_to_file  # noqa: E402
from edgeprune.training.recipe import Optim  # noqa: E402
from tests.test_finetune_methods import LEARNED, SETTINGS  # noqa: E402
from tests.training_helper import budget_near_its_aim, setup_dir, write_budget  # noqa: E402


def run(method: str, d: Path, epochs: int) -> dict:
    # learned schedules aim at 3 ms; fixed ones at a budget whose own pick is near its aim
    budget = write_budget(d, 3.0, method) if method in LEARNED else budget_near_its_aim(d, method)
    lr, batch = SETTINGS[method]
    req = FinetuneRequest(
        src=str(d / "dense.pth"), data=d / "data", budget=budget, heads=2, threads=1,
        epochs=epochs, batch=int(batch), data_recipe=Recipe(augment=False),
        optim=Optim(lr=float(lr), mixup=0.0, cutmix=0.0, smoothing=0.0, weight_decay=0.0),
    )  # fmt: skip
    t = time.perf_counter()
    res = finetune_to_file(req, d / f"{method}.pth")
    b = json.loads(budget.read_text())
    return {
        "aim_ms": res.aim_ms, "target_ms": res.target_ms, "budget_predicted_ms": b["predicted_ms"],
        "start_ms": res.start_ms, "end_ms": res.final_ms, "learned": method in LEARNED,
        "off_aim": (res.final_ms - res.aim_ms) / res.aim_ms, "top1": res.epochs[-1].top1,
        "schedule": res.epochs[-1].schedule, "seconds": time.perf_counter() - t,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--name", default="finetune_methods")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = setup_dir(Path(tmp), train=32)
        rows = {m: run(m, d, a.epochs) for m in SETTINGS}
    meta = {**host_meta(), "torch": torch.__version__, "epochs": a.epochs}
    lines = [f"# Fine-tuning to a budget, tiny model, {a.epochs} epochs ({meta['date']}, "
             f"torch {torch.__version__})", "",
             "| method | schedule | start ms | end ms | aim ms | end vs aim | top-1 (val) |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for m, r in rows.items():
        how = "learned" if r["learned"] else "the budget's"
        lines.append(f"| {m} | {how} | {r['start_ms']:.3f} | {r['end_ms']:.3f} | "
                     f"{r['aim_ms']:.3f} | {100 * r['off_aim']:+.1f} % | {r['top1']:.1f} % |")  # fmt: skip
    write_results(Path(__file__).parent / "results", a.name, {"meta": meta, "methods": rows}, lines)


if __name__ == "__main__":
    main()
