"""The one parity check every target uses: the artifact and PyTorch on the same seeded
inputs, max |diff| and top-1 agreement against the target's tolerance, one error.

Quantized programs are judged by what quantization may change and what it must not:
top-1 agreement with fp32 and the mean KL(fp32 ‖ artifact) of the softmax outputs
(``kl_divergence``, nats), both against the tolerance; their max |diff| is a loose
sanity bound (int8 logits are expected to move)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeprune.core.backends.runner import get_runner
from edgeprune.core.errors import ParityError
from edgeprune.export.registry import Tolerance

PARITY_SEED = 1234


@dataclass(kw_only=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float
    inputs: int
    atol: float
    min_top1: float = 1.0
    kl: float = 0.0  # mean KL(reference ‖ artifact) of the softmax outputs, nats
    max_kl: float | None = None  # its limit (None: recorded, not judged)
    against: str = "pytorch fp32"
    runtime: str = "onnxruntime"

    @property
    def ok(self) -> bool:
        kl_ok = self.max_kl is None or self.kl <= self.max_kl
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_top1 and kl_ok

    def to_dict(self) -> dict:
        return {
            "status": "passed" if self.ok else "failed",
            "runtime": self.runtime,
            "against": self.against,
            "max_abs_diff": float(self.max_abs_diff),
            "top1_agreement": float(self.top1_agreement),
            "inputs": self.inputs,
            "atol": self.atol,
            "min_top1_agreement": self.min_top1,
            "kl_divergence": float(self.kl),
            "max_kl_divergence": self.max_kl,
            "passed": self.ok,
        }


def parity_inputs(batch: int, img_size: int, n_inputs: int, seed: int = PARITY_SEED):
    """The random images every parity check uses (same seed: same images for every
    target, so ONNX, engine and ORT figures are comparable)."""

    g = torch.Generator().manual_seed(seed)
    for _ in range(-(-n_inputs // batch)):
        yield torch.randn(batch, 3, img_size, img_size, generator=g)


def kl_divergence(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) ‖ softmax(out)) per row of two logit arrays (…×classes), in nats,
    computed in float64 from log-softmaxes (no overflow, no log of 0)."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(out)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)


def as_function(runner) -> Callable[[np.ndarray], np.ndarray | None]:
    """A runner (``core.backends.runner.Runner``: ``.run`` returns the outputs) or a plain
    function of one array, as a function of one array giving the logits."""
    if hasattr(runner, "run"):
        return lambda x: runner.run(x)[0]
    return runner


def compare(
    model,
    run_fn,
    *,
    batch: int,
    img_size: int,
    n_inputs: int = 16,
    tol: Tolerance = Tolerance(1e-4, 1.0),
    seed: int = PARITY_SEED,
    runtime: str = "onnxruntime",
) -> Parity:
    """Run PyTorch and ``run_fn`` (a runner, or numpy in → logits out) on the same images;
    the figures are judged against ``tol``."""

    fn = as_function(run_fn)
    max_diff, agree, seen, kl = 0.0, 0, 0, 0.0
    with torch.no_grad():
        for x in parity_inputs(batch, img_size, n_inputs, seed):
            ref = model(x).numpy()
            out = np.asarray(fn(x.numpy()), dtype=np.float32).reshape(ref.shape)
            diff = float(np.abs(ref - out).max())
            # NaN in the artifact's outputs: no bound holds (max() would skip a NaN)
            max_diff = max(max_diff, diff if np.isfinite(out).all() else float("inf"))
            agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
            kl += float(kl_divergence(ref, out).sum())
            seen += batch
    return Parity(
        max_abs_diff=max_diff,
        top1_agreement=agree / seen,
        inputs=seen,
        atol=tol.atol,
        min_top1=tol.min_top1,
        kl=kl / seen,
        max_kl=tol.max_kl,
        runtime=runtime,
    )


def require(parity: Parity, what: str, hint: str = "no file was written") -> Parity:
    """Raise the one parity error (exit 1) unless ``parity`` is within its tolerance."""
    if not parity.ok:
        raise ParityError(
            f"{what} differs from PyTorch: "
            + (
                f"max |diff| {parity.max_abs_diff:.3g} (limit {parity.atol:g})"
                if np.isfinite(parity.max_abs_diff)
                else "its outputs hold NaN or infinity"
            )
            + f", top-1 agreement {parity.top1_agreement:.1%} "
            f"(needs {parity.min_top1:.0%})"
            + (
                f", KL(fp32 ‖ it) {parity.kl:.3g} (limit {parity.max_kl:g})"
                if parity.max_kl is not None
                else ""
            ),
            hint,
            exit_code=1,
        )
    return parity


def check_parity(
    what: str,
    source,
    artifact,
    *,
    batch: int,
    n_inputs: int,
    tol: Tolerance,
    runtime: str = "onnxruntime",
    hint: str = "no file was written",
    label: str | None = None,
    **runner_options,
) -> Parity:
    """``artifact`` against ``source``'s PyTorch model on the seeded inputs; raises the one
    ``ParityError`` when it is outside ``tol``.

    ``artifact``: a path or bytes, loaded here in ``runtime``'s runner
    (``edgeprune.core.backends.runner.get_runner(runtime, **runner_options)``), or a runner
    already loaded (or a function of one array). ``label`` names the runtime in the
    figures (default ``runtime``)."""
    if isinstance(artifact, str | Path | bytes):
        runner = get_runner(runtime, **runner_options)
        runner.load(artifact)
        artifact = runner
    img = source.arch.img_size
    p = compare(
        source.model(),
        artifact,
        batch=batch,
        img_size=img,
        n_inputs=n_inputs,
        tol=tol,
        runtime=label or runtime,
    )
    return require(p, what, hint)
