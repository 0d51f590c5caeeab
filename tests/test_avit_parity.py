"""A-ViT static graph: ONNX parity without calibration (saturated halting scores),
and the log-space ranking against the plain cumulative sum."""

import onnx
import pytest
import torch

from edgeprune.core.methods.avit import AViTStatic
from edgeprune.core.source import resolve
from edgeprune.export.onnx import export_onnx
from tests.reference_vit import RefViT, halting, rows

EPS = 0.01  # A-ViT's halting threshold 1 - eps (released act_vision_transformer.py)


@pytest.mark.parametrize("batch", [1, 8])
def test_uncalibrated_avit_exports_with_parity(tmp_path, batch):
    """Random weights and the tiny gates (10/30) put every halting logit at -30..-100:
    a sigmoid sum there is 1e-9..1e-40, and onnxruntime's Sigmoid flushes it to 0, so a
    ranking on it kept other tokens than PyTorch (max logit diff 0.05-0.5)."""
    out = tmp_path / "a.onnx"
    src = resolve("deit_tiny:avit")
    assert src.config.options["schedule"] == "placeholder"
    man = export_onnx(src, out, batch=batch, n_parity_inputs=16)
    assert man["parity"]["passed"] and man["parity"]["max_abs_diff"] <= 1e-4
    assert man["parity"]["top1_agreement"] == 1.0
    proto = onnx.load(out)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("TopK") == len(src.plan.selectors)
    assert not {"Shape", "ConstantOfShape", "NonZero", "Sigmoid"} & set(ops)


def plain_sum_reference(model: AViTStatic, img: torch.Tensor):
    """The straightforward formulation, written out by hand (tests/reference_vit.py on
    the model's weights): rank on the plain sum of sigmoids σ(γ·x_0 − β).
    Returns the logits and, per image, whether CLS halted before the last block."""
    ref = RefViT(model.state_dict(), model.arch.num_heads, dtype=img.dtype)
    x = ref.embed(img)
    c = torch.zeros_like(x[:, :, 0])
    c0 = torch.zeros_like(x[:, 0, :1])
    rem, run = torch.ones_like(c0), torch.ones_like(c0)
    out = torch.zeros_like(x[:, 0])
    depth = ref.depth
    for i in range(depth):
        keep = model.keep_at.get(i)
        if keep is not None:
            _, idx = torch.topk(c[:, 1:], keep, dim=1, largest=False)
            x = torch.cat([x[:, :1], rows(x[:, 1:], idx)], dim=1)
            c = torch.cat([c[:, :1], torch.gather(c[:, 1:], 1, idx)], dim=1)
        x = ref.block(i, x)
        h = halting(x, model.scale, model.center)
        c = c + h
        h0 = torch.ones_like(c0) if i == depth - 1 else h[:, :1]
        c0 = c0 + h0
        reached = (c0 > 1 - EPS).to(x.dtype) * run
        not_reached = (c0 < 1 - EPS).to(x.dtype)
        out = out + x[:, 0] * run * (rem * reached + h0 * not_reached)
        rem = rem - not_reached * h0
        run = not_reached
        if i == depth - 2:
            halted_early = run[:, 0] == 0
    return ref.classify(out[:, None]), halted_early


@pytest.mark.parametrize(
    "gates", [None, {"gate_scale": 1.0, "gate_center": 2.0}], ids=["saturated", "halting"]
)
def test_log_space_ranking_equals_plain_sum(gates):
    """In float64 the plain sum does not saturate at these logits, so it is an exact
    reference: the log-space key must keep the same tokens and give the same logits.
    The 1/2 gates make tokens and CLS halt (the CLS threshold branch is taken)."""
    src = resolve("deit_tiny:avit", method_options=gates) if gates else resolve("deit_tiny:avit")
    model = src.model().double()
    img = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        ours = model(img)
        ref, cls_halted = plain_sum_reference(model, img)
    assert cls_halted.any() if gates else not cls_halted.any()
    assert (ours - ref).abs().max().item() <= 1e-5
