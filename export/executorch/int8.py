"""int8 for ``--target executorch --int8``: PT2E static quantization with XNNPACK's own
quantizer (``XNNPACKQuantizer``, symmetric: per-channel int8 weights, per-tensor int8
activations observed by histogram), calibrated on seeded random images or the user's
images (``--images DIR``), then lowered to XNNPACK like the fp32 program.

What is quantized: the patch embedding, the transformer blocks (their linears and
residual adds) and the head, i.e. every node traced inside ``patch_embed``, ``blocks.*``
or ``head``. Everything between blocks stays fp32: the selectors' scoring (DynamicViT's
and SPViT's predictors, A-ViT's halting, EViT's CLS attention, ToMe's matching), TopK,
the gathers, the package/fused tokens and the token concatenations. So TopK ranks fp32
scores, and every tensor that crosses a delegate boundary is fp32.

That cannot be said with the quantizer's filter alone: the quantizer propagates
annotations through slices and views after its filter, so a ``x[:, :1]`` after a
quantized residual add became an int8 slice that XNNPACK refuses at load
(``Failed to create static slice node … xnn_status_invalid_parameter``). ``BlocksOnly``
removes every annotation outside those modules after the quantizer has annotated, and
then every annotation that shares an observer with a removed one.

The quantizer is executorch's (imported through ``import_executorch``), the PT2E flow
torchao's, which comes with executorch (imported in ``_pt2e`` only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeprune.core.backends.optional import EXECUTORCH_HINT, import_executorch
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.core.images import batches, preprocess_for, scan

QUANTIZED_MODULES = ("patch_embed", "blocks", "head")
ANNOTATION = "quantization_annotation"  # the key PT2E quantizers annotate nodes under
CALIBRATION_SEED = 0  # not the parity seed: calibration and the check see other images
RANDOM_CALIBRATION = 16  # seeded random images when no --images folder is given
MAX_CALIBRATION_IMAGES = 128  # of an --images folder (class-interleaved, as --limit)
QUANTIZER = {
    "quantizer": "executorch XNNPACKQuantizer (PT2E, static)",
    "config": "get_symmetric_quantization_config(is_per_channel=True)",
    "weights": "int8 symmetric per output channel [-127, 127]",
    "activations": "int8 per tensor [-128, 127], HistogramObserver",
    "quantized": "patch embedding, transformer blocks (linears, residual adds), head",
    "kept_fp32": "selectors (scoring, top-k, gather, fused/package tokens), "
    "LayerNorm, softmax, attention matmuls",
}


@dataclass(kw_only=True)
class Calibration:
    """The calibration batches (each of the exported batch size) and where they came from."""

    batches: list[torch.Tensor]
    info: dict = field(default_factory=dict)


def random_calibration(batch: int, img_size: int, n: int = RANDOM_CALIBRATION) -> Calibration:
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    xs = [torch.randn(batch, 3, img_size, img_size, generator=g) for _ in range(-(-n // batch))]
    info = {"source": "random", "seed": CALIBRATION_SEED, "images": len(xs) * batch}
    return Calibration(batches=xs, info=info)


def image_calibration(folder: Path, batch: int, img_size: int) -> Calibration:
    """Up to ``MAX_CALIBRATION_IMAGES`` images of ``folder`` (DeiT preprocessing), in
    batches of ``batch``; the last batch is filled up with the first images."""

    found = scan(folder)
    images = found.limit(MAX_CALIBRATION_IMAGES)
    pre = preprocess_for(img_size)
    x = torch.cat([b.images for b in batches(images, pre, 64, strict=True)])
    n = x.shape[0]
    x = x[[i % n for i in range(-(-n // batch) * batch)]]  # whole batches
    info = {
        "source": "images",
        "folder": str(Path(folder)),
        "images": n,
        "images_in_folder": len(found.files),
        "preprocess": pre.to_dict(),
    }
    return Calibration(batches=list(x.split(batch)), info=info)


def calibration_for(images: Path | None, batch: int, img_size: int) -> Calibration:
    if images is None:
        return random_calibration(batch, img_size)
    return image_calibration(images, batch, img_size)


def _in_quantized_module(node) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] for v in stack.values()]
    return any(p == m or p.startswith(m + ".") for p in paths for m in QUANTIZED_MODULES)


def _observed(ref) -> bool:
    """Whether the observer a ``SharedQuantizationSpec`` points at still exists: an
    edge ``(producer, consumer)`` observed by the consumer, or a node's output."""
    if isinstance(ref, tuple):
        producer, consumer = ref
        ann = consumer.meta.get(ANNOTATION)
        return ann is not None and producer in ann.input_qspec_map
    ann = ref.meta.get(ANNOTATION)
    return ann is not None and ann.output_qspec is not None


def _pt2e(module: str):
    """torchao's ``torchao.quantization.pt2e.<module>`` (installed with executorch)."""
    try:
        return importlib.import_module(f"torchao.quantization.pt2e.{module}")
    except ImportError:
        raise MissingRuntimeError(
            "int8 needs torchao (PT2E quantization)", EXECUTORCH_HINT
        ) from None


def keep_outside_fp32(gm: torch.fx.GraphModule) -> None:
    """Drop the annotations of nodes outside ``QUANTIZED_MODULES``, then of every node
    sharing an observer with a dropped one (until none is left dangling)."""
    shared = _pt2e("quantizer").SharedQuantizationSpec
    for n in gm.graph.nodes:
        if ANNOTATION in n.meta and not _in_quantized_module(n):
            del n.meta[ANNOTATION]
    changed = True
    while changed:
        changed = False
        for n in gm.graph.nodes:
            ann = n.meta.get(ANNOTATION)
            if ann is None:
                continue
            specs = [*ann.input_qspec_map.values(), ann.output_qspec]
            if any(isinstance(s, shared) and not _observed(s.edge_or_node) for s in specs):
                del n.meta[ANNOTATION]
                changed = True


def xnnpack_quantizer():
    """XNNPACK's quantizer (symmetric, per-channel weights) that leaves what lies
    outside the patch embedding, the blocks and the head in fp32."""
    xnnpack = import_executorch("backends.xnnpack.quantizer.xnnpack_quantizer")

    class BlocksOnly(xnnpack.XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            keep_outside_fp32(model)
            return model

    return BlocksOnly().set_global(xnnpack.get_symmetric_quantization_config(is_per_channel=True))


def quantize(model: torch.nn.Module, example: torch.Tensor, calibration: Calibration):
    """``model`` → its PT2E-quantized graph (a ``GraphModule``: q/dq around int8 ops),
    calibrated on ``calibration``; export it again with ``torch.export`` to lower it."""
    pt2e = _pt2e("quantize_pt2e")
    try:
        captured = torch.export.export(model.eval(), (example,)).module()
        prepared = pt2e.prepare_pt2e(captured, xnnpack_quantizer())
        with torch.no_grad():
            for x in calibration.batches:
                prepared(x)
        return pt2e.convert_pt2e(prepared)
    except EdgepruneError:
        raise
    except Exception as e:  # noqa: BLE001  (torch.export / PT2E raise many kinds)
        msg = " ".join(str(e).split())[:200]
        raise EdgepruneError(f"int8 quantization failed: {msg}", exit_code=1) from e
