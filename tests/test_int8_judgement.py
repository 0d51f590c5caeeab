"""The int8 parity judgement can fail: KL(fp32 ‖ int8) and top-1 agreement against
export/registry.py's INT8 tolerance, on quantizations made here in PyTorch whose
outcome is known — weights rounded to int8 at the right scale pass; at half the right
scale (the largest weights clipped), or random weights, fail. The half-scale one
passes the limits ExecuTorch int8 exports were judged by before (max |diff| ≤ 10 with
50 % top-1: the 16-input parity gives it 50 % agreement and max |diff| < 2): only the
KL bound finds it."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from edgeprune.core.arch import Arch
from edgeprune.core.errors import ParityError
from edgeprune.core.methods import get_method
from edgeprune.core.source import Source
from edgeprune.export.parity import compare, kl_divergence, require
from edgeprune.export.registry import INT8, Tolerance

TINY = Arch("int8_judge", embed_dim=48, num_heads=3, depth=2, img_size=64, num_classes=10)
OLD_ET = Tolerance(10.0, 0.5)  # ExecuTorch's int8 limits before the KL bound


def test_kl_divergence_by_hand():
    # softmax([0, ln 3]) = (1/4, 3/4) against (1/2, 1/2)
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    got = kl_divergence(np.array([[0.0, math.log(3.0)]]), np.array([[5.0, 5.0]]))
    assert got.tolist() == pytest.approx([want], rel=1e-12)
    same = np.array([[1.0, -2.0, 3.0], [1000.0, 0.0, -1000.0]])  # no overflow
    assert kl_divergence(same, same + 7.0).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
    assert kl_divergence(same, same[:, ::-1])[1] > 1000  # a confident wrong answer


@pytest.fixture(scope="module")
def source() -> Source:
    m = get_method("dynamicvit")
    cfg = m.with_overrides(m.default_config(TINY), TINY, keep=(0.5,), locs=(1,))
    return Source("tiny:dynamicvit", "builtin", TINY, m, cfg, m.token_plan(TINY, cfg))


def int8_weights(model, scale_factor: float):
    """Every matrix rounded to int8 per output channel, at ``scale_factor`` × the right
    scale (max |w| / 127): 1 is a right weight quantization; below 1 clips."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        for p in q.parameters():
            if p.ndim >= 2:
                amax = p.abs().amax(dim=tuple(range(1, p.ndim)), keepdim=True)
                s = amax / 127 * scale_factor
                p.copy_((p / s).round().clamp(-127, 127) * s)
    return q


def judge(source, other, tol=INT8, n_inputs=16):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return other(torch.from_numpy(x)).numpy()

    return compare(source.model(), run, batch=1, img_size=64, n_inputs=n_inputs, tol=tol)


def test_right_int8_weights_pass(source):
    p = judge(source, int8_weights(source.model(), 1.0))
    assert p.ok and p.kl < 0.02 and p.top1_agreement >= 0.9, p.to_dict()
    assert require(p, "int8") is p
    d = p.to_dict()
    assert d["max_kl_divergence"] == INT8.max_kl and d["kl_divergence"] == pytest.approx(p.kl)


def test_half_scale_int8_fails_where_the_old_limits_passed(source):
    p = judge(source, int8_weights(source.model(), 0.5))
    assert p.kl > INT8.max_kl and not p.ok, p.to_dict()
    with pytest.raises(ParityError, match=r"KL\(fp32 ‖ it\) .* \(limit 0\.1\)"):
        require(p, "the int8 ExecuTorch program")
    # the limits ExecuTorch's int8 was judged by before let it through
    assert judge(source, int8_weights(source.model(), 0.5), tol=OLD_ET).ok


def test_random_weights_fail(source):
    other = source.method.build(TINY, source.plan).init_random(7).eval()
    p = judge(source, other)
    assert p.kl > 5 * INT8.max_kl and p.top1_agreement < INT8.min_top1 and not p.ok


def test_a_nan_program_fails(source):
    p = compare(
        source.model(), lambda x: np.full((1, 10), np.nan, np.float32), batch=1, img_size=64,
        n_inputs=2, tol=INT8,
    )  # fmt: skip
    assert not p.ok


def test_one_nan_logit_fails_even_where_top1_agrees(source):
    """max() skips a NaN: a program whose outputs hold one NaN logit passed the max |diff|
    bound (and, with no top-1 limit, the check). It fails now, and says why in words."""
    model = source.model()

    def one_nan(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(torch.from_numpy(x)).numpy().copy()
        y[:, int(np.argmin(y))] = np.nan
        return y

    loose = Tolerance(1e3, 0.0)
    p = compare(model, one_nan, batch=1, img_size=64, n_inputs=4, tol=loose)
    assert not p.ok and math.isinf(p.max_abs_diff)
    with pytest.raises(ParityError, match="its outputs hold NaN or infinity"):
        require(p, "the program")


def test_export_prints_the_kl_it_was_judged_by():
    """The int8 verdict's KL and its limit reach the export's text, not only the
    manifest; an fp32 parity (no KL limit) prints no KL."""
    from types import SimpleNamespace

    from rich.console import Console

    from edgeprune.render.tables import print_export

    base = {"status": "passed", "runtime": "executorch (xnnpack)", "max_abs_diff": 0.31,
            "top1_agreement": 0.94, "inputs": 16, "atol": 1.0, "min_top1_agreement": 0.5,
            "kl_divergence": 0.0042}  # fmt: skip
    lines = {}
    for name, limit in (("int8", 0.1), ("fp32", None)):
        out, err = Console(record=True, width=200), Console(record=True, width=200)
        man = {"sha256": "ab" * 32, "token_plan": {"tokens_per_block": [5, 5, 3]}}
        result = SimpleNamespace(kept=[], next_steps=[], written=True, artifact="m.pte",
                                 manifest=man, parity={**base, "max_kl_divergence": limit},
                                 warnings=[])  # fmt: skip
        print_export(result, out, err)
        lines[name] = next(ln for ln in out.export_text().splitlines() if "parity" in ln)
    assert "KL(fp32 ‖ it) 0.0042" in lines["int8"] and "KL 0.1)" in lines["int8"]
    assert "KL" not in lines["fp32"]
