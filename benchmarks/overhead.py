"""Where a pruned graph loses time against its GFLOPs ratio (issue #7).

    taskset -c 1 python benchmarks/overhead.py [--specs deit_tiny:spvit,...] [--rounds 150]
                                               [--runtime onnxruntime|executorch]

For every spec, three ONNX graphs are timed interleaved in one process (ONNX Runtime
CPU, batch 1, fixed threads): dense, the pruned model, and a *slice reference*: the
same backbone at the plan's token counts, tokens dropped by plain slicing, no
selector. The slice reference is what the pruned graph would cost if selecting,
gathering and merging were free, so

    speedup = dense / pruned = (dense / slice) × (slice / pruned)
              backbone part ─┘                └─ selector part

"backbone share" is dense/slice over the backbone-only GFLOPs ratio (how close smaller
blocks come to their FLOPs), "selectors" is (pruned − slice) / pruned, their share of
the pruned latency. --profile adds ONNX Runtime's per-op-type kernel times of the
pruned graph minus the slice reference. Not part of the test run.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from timing import interleave, pair_ratio, share_of_ideal  # noqa: E402

from edgeprune.core.models.deit import VisionTransformer  # noqa: E402
from edgeprune.core.source import resolve  # noqa: E402
from edgeprune.export.onnx import export_onnx, simplify, trace_to_onnx  # noqa: E402
from edgeprune.runtimes.onnxruntime import make_session  # noqa: E402

DEFAULT_SPECS = "deit_tiny:spvit,deit_tiny:tome@r16,deit_tiny:dynamicvit@0.7,deit_tiny:evit@0.7"


class SliceReference(VisionTransformer):
    """The backbone at a plan's token counts, reduced by slicing: zero-cost selectors."""

    def __init__(self, arch, plan):
        super().__init__(arch)
        self.plan = plan

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img)
        for blk, n_attn, n_mlp in zip(
            self.blocks, self.plan.attn_tokens, self.plan.mlp_tokens, strict=True
        ):
            x = _first(x, n_attn)
            x = x + blk.attn(blk.norm1(x))
            x = _first(x, n_mlp)
            x = x + blk.mlp(blk.norm2(x))
        return self.classify(x)


def _first(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` tokens; the tensor itself when it has ``n`` (a no-op slice would be
    an ``alias_copy`` outside XNNPACK and cut the reference into segments)."""
    return x if x.shape[1] == n else x[:, :n]


def slice_reference_onnx(spec: str, out: Path) -> None:
    src = resolve(spec)
    model_onnx(SliceReference(src.arch, src.plan).init_random(0).eval(), out)


def model_onnx(model, out: Path) -> None:
    """An eager model (batch 1) as a simplified ONNX graph, no parity check."""
    img = model.arch.img_size
    out.write_bytes(simplify(trace_to_onnx(model, (1, 3, img, img))).SerializeToString())


def ort_runner(path: Path, threads: int, x: np.ndarray):
    """One ONNX Runtime session (``make_session``, as the product times) run on x."""
    sess = make_session(path, threads=threads)
    feeds = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feeds)


def pte_runner(model, threads: int, x: np.ndarray, kernels: bool = False):
    """The model lowered as ``export --target executorch`` lowers it (``kernels``: with
    ``--custom-kernels``), loaded in the ExecuTorch runtime: (run on x, the lowering)."""
    from edgeprune.export.executorch.target import lower
    from edgeprune.runtimes.executorch.runner import ExecuTorchRunner

    img = model.arch.img_size
    low = lower(model, torch.zeros(1, 3, img, img), kernels=kernels)
    r = ExecuTorchRunner(threads=threads)
    r.load(low.buffer)
    xt = [torch.from_numpy(x)]
    return (lambda: r.method.execute(xt)), low


def op_times(path: Path, threads: int, runs: int = 60) -> collections.Counter:
    """Median kernel time per node from ONNX Runtime's profiler, summed per op type (µs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "prof")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    feeds = {sess.get_inputs()[0].name: x}
    for _ in range(runs + 10):
        sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    per_node: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for e in json.loads(trace.read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"]["op_name"], e["name"])].append(e["dur"])
    trace.unlink()
    out: collections.Counter = collections.Counter()
    for (op, _), d in per_node.items():
        out[op] += float(np.median(d[-runs:]))
    return out


def ort_runners(spec: str, src, threads: int, x: np.ndarray, td: str) -> tuple[dict, dict]:
    paths = {k: Path(td) / f"{k}.onnx" for k in ("dense", "pruned", "slice")}
    export_onnx(resolve(src.arch.name), paths["dense"], force=True, n_parity_inputs=1)
    export_onnx(src, paths["pruned"], force=True, n_parity_inputs=1)
    slice_reference_onnx(spec, paths["slice"])
    return {k: ort_runner(p, threads, x) for k, p in paths.items()}, paths


def executorch_runners(spec: str, src, threads: int, x: np.ndarray) -> dict:
    """The same three graphs lowered to XNNPACK-delegated .pte programs, as ``export
    --target executorch`` lowers them; run in the ExecuTorch runtime with ``threads``."""
    from edgeprune.runtimes.executorch.runner import set_threads

    models = {
        "dense": resolve(src.arch.name).model(),
        "pruned": src.model(),
        "slice": SliceReference(src.arch, src.plan).init_random(0).eval(),
    }
    runners = {}
    for k, m in models.items():
        runners[k], low = pte_runner(m, threads, x)
        print(f"   {k}: {low.segments} XNNPACK segments, outside: {low.outside}", flush=True)
    set_threads(threads)
    return runners


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--specs", default=DEFAULT_SPECS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=150)
    ap.add_argument("--runtime", choices=("onnxruntime", "executorch"), default="onnxruntime")
    ap.add_argument("--profile", action="store_true", help="per-op-type kernel time deltas (ORT)")
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as td:
        for spec in args.specs.split(","):
            src = resolve(spec)
            if args.runtime == "executorch":
                runners, paths = executorch_runners(spec, src, args.threads, x), None
            else:
                runners, paths = ort_runners(spec, src, args.threads, x, td)
            t = interleave(runners, runs=args.rounds, warmup=10)
            fl = src.flops()
            total_ratio, backbone_ratio = fl.dense / fl.total, fl.dense / fl.pruned
            speedup = pair_ratio(t["dense"], t["pruned"])["median"]
            backbone = pair_ratio(t["dense"], t["slice"])["median"]
            pairs = zip(t["pruned"], t["slice"], strict=True)
            sel = float(np.median([(p - s) / p for p, s in pairs]))
            print(
                f"{spec:26s} [{args.runtime}, {args.threads} thread(s)] speedup {speedup:.3f}× "
                f"of {total_ratio:.3f}× ({share_of_ideal(speedup, total_ratio):.1%} of ideal) | "
                f"slice reference {backbone:.3f}× of backbone-only {backbone_ratio:.3f}× "
                f"({share_of_ideal(backbone, backbone_ratio):.1%}) | selectors {sel:.1%} of "
                f"pruned latency, {fl.selectors / fl.total:.1%} of its GFLOPs",
                flush=True,
            )
            if args.profile and paths is not None:
                pruned = op_times(paths["pruned"], args.threads)
                ref = op_times(paths["slice"], args.threads)
                delta = {op: pruned[op] - ref[op] for op in set(pruned) | set(ref)}
                top = sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:12]
                print("   kernel µs pruned − slice:", ", ".join(f"{o} {d:+.0f}" for o, d in top))


if __name__ == "__main__":
    main()
