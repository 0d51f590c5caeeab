"""Golden outputs from each method's own released model class (tests/golden/, written
by tests/golden/make_golden.py with the authors' code): edgeprune loads the checkpoint,
exports it to ONNX with its own export function, and onnxruntime's output is compared
with the authors' logits on the same inputs."""

import json
from pathlib import Path

import pytest
import torch

from edgeprune.core.methods.avit_calibration import calibrate, masked_forward
from edgeprune.core.source import resolve
from edgeprune.export.onnx import export_onnx
from edgeprune.runtimes.onnxruntime import make_session, run

GOLDEN = Path(__file__).parent / "golden"
# how each key-less fixture is chosen on the command line (as a user would)
OPTIONS = {
    "dynamicvit": {},
    "spvit": {},
    "evit": {"method": "evit"},
    "tome": {"method": "tome", "method_options": {"r": 8}},
}
# A-ViT: edgeprune's zipped graph with counts calibrated on the 4 fixture inputs
# (quantile 1.0) against the released masked model. Measured when the fixture was made
# (onnxruntime 1.32): top-1 agreement 4/4, max |logit diff| 0.1289 (logits std ~1);
# a token halts at the calibrated count, not at its own threshold (README, avit row)
AVIT_MIN_AGREEMENT = 1.0
AVIT_MAX_DIFF = 0.13


def fixture(method: str):
    d = GOLDEN / method
    meta = json.loads((d / "meta.json").read_text())
    x = torch.load(GOLDEN / "input.pt", weights_only=True).float()
    expected = torch.load(d / "expected.pt", weights_only=True)
    return d / meta["checkpoint"], meta, x, expected


def onnx_logits(src, x: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    out = tmp_path / "model.onnx"
    man = export_onnx(src, out, batch=x.shape[0], n_parity_inputs=1)
    assert man["parity"]["passed"]
    return torch.from_numpy(run(make_session(out), x.numpy()))


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_export_equals_official_model(method, tmp_path):
    ckpt, meta, x, expected = fixture(method)
    assert meta["commit"] and meta["repository"].startswith("https://github.com/")
    src = resolve(str(ckpt), heads=meta["num_heads"], **OPTIONS[method])
    assert src.method.name == method
    got = onnx_logits(src, x, tmp_path)
    assert (got - expected).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_avit_detected_from_released_name_and_close_to_official(tmp_path):
    ckpt, meta, x, expected = fixture("avit")
    src = resolve(str(ckpt), heads=meta["num_heads"])
    assert src.method.name == "avit"
    opts = src.config.options
    assert (opts["gate_scale"], opts["gate_center"]) == (meta["gate_scale"], meta["gate_center"])
    assert any("A-ViT" in n for n in src.notes)
    scale, center = opts["gate_scale"], opts["gate_center"]
    # edgeprune's own masked reference is the released inference: equal
    with torch.no_grad():
        masked, running = masked_forward(src.model(), x, scale, center)
    assert (masked - expected).abs().max().item() <= 1e-4
    assert running.tolist() == torch.tensor(meta["running_tokens_per_block"]).t().tolist()
    # the zipped static graph, calibrated on these inputs, against the released model
    cal = calibrate(src.model(), x, src.arch, scale, center, quantile=1.0)
    cal_path = tmp_path / "c.json"
    cal_path.write_text(json.dumps(cal))
    zipped_src = resolve(
        str(ckpt), heads=meta["num_heads"], method_options={"calibration": str(cal_path)}
    )
    got = onnx_logits(zipped_src, x, tmp_path)
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agreement >= AVIT_MIN_AGREEMENT
    assert (got - expected).abs().max().item() <= AVIT_MAX_DIFF


@pytest.mark.parametrize("center", [6.0, 8.0])
def test_avit_saturated_halting_scores_rank_the_same_in_every_runtime(center, tmp_path):
    """With gate centre 6 or 8 the fixture's halting logits reach z ≳ 17, where
    log sigmoid(z) rounds to 0 in float32: many tokens carry bit-equal ranking keys.
    torch.topk and ONNX TopK break such ties differently unless the graph ranks by a
    key with no ties (the token index breaks them); parity must hold."""
    ckpt, meta, x, _ = fixture("avit")
    named = tmp_path / f"tiny-10-{center:g}.pth"
    named.write_bytes(ckpt.read_bytes())
    src = resolve(str(named), heads=meta["num_heads"])
    assert src.config.options["gate_center"] == center
    cal = calibrate(src.model(), x, src.arch, 10.0, center, quantile=1.0)
    cal_path = tmp_path / "c.json"
    cal_path.write_text(json.dumps(cal))
    zipped = resolve(
        str(named), heads=meta["num_heads"], method_options={"calibration": str(cal_path)}
    )
    man = export_onnx(zipped, tmp_path / "m.onnx", batch=x.shape[0], n_parity_inputs=4)
    assert man["parity"]["passed"]
    # the parity inputs are seeded random images; the fixture's own inputs too
    got = torch.from_numpy(run(make_session(tmp_path / "m.onnx"), x.numpy()))
    with torch.no_grad():
        ref = zipped.model()(x)
    assert (got - ref).abs().max().item() <= 1e-4
