"""A-ViT calibration and zipping; one-line errors for bad input per method."""

import json

import pytest
import torch

from edgeprune.core.methods.avit import AViT
from edgeprune.core.methods.avit_calibration import masked_forward
from edgeprune.core.source import resolve


def test_avit_zipping_equals_masked_when_nothing_halts():
    """With a gate that never halts before the last block, the masked model is the
    dense model, and zipping that keeps every token must give the same logits."""
    gate = {"gate_scale": 1.0, "gate_center": 1000.0}
    src = resolve("deit_tiny:avit", keep=(1.0,), locs=(3,), method_options=gate)
    model = src.model()
    img = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        masked, counts = masked_forward(model, img, 1.0, 1000.0)
        dense = type(model).__mro__[1].forward(model, img)
        ours = model(img)
    assert (counts == 197).all()
    assert (masked - dense).abs().max().item() <= 1e-4
    assert (ours - dense).abs().max().item() <= 1e-4
    assert src.plan.tokens_per_block == (197,) * 12


def test_calibrate_cli_then_inspect_and_export(cli, tmp_path):
    calib = tmp_path / "c.json"
    code, out, err = cli(
        "calibrate",
        "deit_tiny",
        "--random",
        "4",
        "--gate-scale",
        "1",
        "--gate-center",
        "2",
        "--out",
        calib,
    )
    assert code == 0, err
    data = json.loads(calib.read_text())
    counts = data["counts"]
    assert counts[0] == 197 and counts[-1] < 197
    assert all(b <= a for a, b in zip(counts, counts[1:], strict=False))
    assert 0 <= data["report"]["top1_agreement"] <= 1
    code, out, err = cli("inspect", "deit_tiny:avit", "--calibration", calib, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["tokens_per_block"] == counts
    assert info["gflops"]["pruned"] < info["gflops"]["dense"]
    onnx_out = tmp_path / "a.onnx"
    code, out, err = cli(
        "export",
        "deit_tiny:avit",
        "--calibration",
        calib,
        "--out",
        onnx_out,
        "--parity-inputs",
        "2",
    )
    assert code == 0, err
    man = json.loads((tmp_path / "a.onnx.manifest.json").read_text())
    assert man["method_report"]["top1_agreement"] == data["report"]["top1_agreement"]
    assert man["method_report"]["max_logit_diff"] == data["report"]["max_logit_diff"]


def test_avit_gates_from_file_name(write_ckpt):
    from tests.conftest import make_state_dict

    p = write_ckpt(make_state_dict("deit_tiny"), "tiny-12-34.pth")
    src = resolve(str(p), method="avit")
    assert src.config.options["gate_scale"] == 12.0
    assert src.config.options["gate_center"] == 34.0
    assert isinstance(src.method, AViT)


def test_spvit_checkpoint_detected_and_not_dynamicvit(write_ckpt):
    from tests.conftest import make_state_dict

    sd = make_state_dict("deit_tiny:spvit")
    assert "score_predictor.0.senet.0.weight" in sd
    assert "score_predictor.2.out_conv.2.4.weight" in sd
    p = write_ckpt({"model": sd}, "spvit.pth")
    assert resolve(str(p)).method.name == "spvit"


@pytest.mark.parametrize(
    "args, needle",
    [
        (("inspect", "deit_tiny:tome@r99"), "ToMe r=99 does not fit"),
        (("inspect", "deit_tiny:tome", "--tome-r", "0"), "ToMe r=0"),
        (("inspect", "deit_tiny:tome", "--keep", "0.5"), "ToMe has no keep ratios"),
        (("inspect", "deit_tiny:avit", "--calibration", "nope.json"), "does not exist"),
        (("inspect", "deit_tiny:evit@1.0"), "keeps all"),
        (("inspect", "deit_tiny:spvit@abc"), "not a number"),
    ],
)
def test_bad_input_one_line(cli, args, needle):
    code, out, err = cli(*args)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1


def test_corrupt_calibration_and_wrong_arch(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = cli("inspect", "deit_tiny:avit", "--calibration", bad)
    assert code == 2 and "not valid JSON" in err
    other = tmp_path / "small.json"
    other.write_text(
        json.dumps(
            {
                "format": "edgeprune-avit-calibration",
                "arch": "deit_small",
                "counts": [197] * 12,
                "gate_scale": 10,
                "gate_center": 75,
            }
        )
    )
    code, _, err = cli("inspect", "deit_tiny:avit", "--calibration", other)
    assert code == 2 and "is for deit_small" in err


def test_dynamicvit_checkpoint_as_spvit_fails(cli, write_ckpt):
    from tests.conftest import make_state_dict

    p = write_ckpt(make_state_dict("deit_tiny:dynamicvit@0.7"), "dyn.pth")
    code, _, err = cli("inspect", p, "--method", "spvit")
    assert code == 2 and "looks like a dynamicvit checkpoint" in err


def test_released_avit_name_detected_and_exported_with_calibration(cli, write_ckpt, tmp_path):
    """A-ViT's released checkpoints hold plain DeiT keys and are named
    [model]-[scale]-[center].pth: read as A-ViT (gates from the name, said in a note),
    and --calibration applies without --method."""
    from tests.conftest import make_state_dict

    p = write_ckpt({"model": make_state_dict("deit_tiny")}, "tiny-1-2.pth")
    src = resolve(str(p))
    assert src.method.name == "avit"
    assert (src.config.options["gate_scale"], src.config.options["gate_center"]) == (1.0, 2.0)
    calib = tmp_path / "c.json"
    code, _, err = cli("calibrate", p, "--random", "2", "--out", calib)
    assert code == 0, err
    code, _, err = cli(
        "export", p, "--calibration", calib, "--out", tmp_path / "a.onnx", "--parity-inputs", "1"
    )
    assert code == 0, err
    assert "read as A-ViT with gate_scale 1, gate_center 2" in " ".join(err.split())
    assert resolve(str(p), method="dense").method.name == "dense"


def test_dense_checkpoint_says_how_to_choose_a_keyless_method(cli, write_ckpt):
    from tests.conftest import make_state_dict

    p = write_ckpt(make_state_dict("deit_tiny"), "deit_tiny.pth")
    src = resolve(str(p))
    assert src.method.name == "dense"
    assert any("--method avit" in n for n in src.notes)
    code, _, err = cli("inspect", p)
    assert code == 0, err
    assert "--method avit" in " ".join(err.split())
    # a name that merely ends in two numbers is not taken for A-ViT
    q = write_ckpt(make_state_dict("deit_tiny"), "checkpoint-10-30.pth")
    assert resolve(str(q)).method.name == "dense"
