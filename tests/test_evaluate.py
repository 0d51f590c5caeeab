"""edgeprune evaluate: an fp32 ONNX artifact answers like its PyTorch source image by
image; references (the manifest's source, the dense backbone, --reference); top-1/top-5
on labelled folders; unreadable images skipped; one-line errors."""

import json
import shutil

import numpy as np
import pytest

from edgeprune.accuracy.evaluate import EvalRequest, compare_logits, evaluate, topk_accuracy
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.images import write_demo_images
from tests.accuracy_helper import HEADS, LOCS, write_dense, write_dynamicvit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    ckpt = write_dynamicvit(d / "dyvit.pth")
    write_demo_images(d / "imgs", classes=4, per_class=5, size=40)
    (d / "imgs" / "class_002" / "zz_broken.png").write_bytes(b"\x89PNG truncated")
    from edgeprune.cli.app import main

    onnx = d / "m.onnx"
    keep = "0.75,0.5,0.25"
    locs = ",".join(map(str, LOCS))
    args = ["export", str(ckpt), "--heads", "2", "--keep", keep, "--locs", locs, "--batch", "3"]
    assert main([*args, "--out", str(onnx)]) == 0
    return d, ckpt, onnx


SCHEDULE = {"keep": "0.75,0.5,0.25", "locs": "1,2,3"}


def _req(model, images, **kw):
    return EvalRequest(model=str(model), images=images, heads=HEADS, threads=1, **kw)


def test_onnx_artifact_matches_pytorch_image_by_image(setup):
    d, ckpt, onnx = setup
    art = evaluate(_req(onnx, d / "imgs", batch=4))  # the graph's batch (3) wins; last padded
    # the source comes from the manifest; its PyTorch model must agree on every image
    from edgeprune.core.source import resolve

    src = resolve(str(ckpt), keep="0.75,0.5,0.25", locs="1,2,3", heads=HEADS)
    pt = evaluate(_req(ckpt, d / "imgs", batch=5, dense_reference=False, **SCHEDULE))
    assert src.plan.attn_tokens == (17, 13, 9, 5)
    assert len(art.read) == 20 and len(art.skipped) == 1  # the broken PNG: skipped, counted
    assert art.read == pt.read
    assert art.predictions == pt.predictions  # same top-1, image by image
    np.testing.assert_allclose(art.logits, pt.logits, atol=1e-4)
    rep = art.to_dict()
    assert rep["skipped_unreadable"] == 1 and rep["labelled"] and rep["classes"] == 4
    assert set(rep["references"]) == {"source", "dense"}
    assert rep["references"]["source"]["top1_agreement"] == 100.0
    assert rep["references"]["source"]["max_logit_diff"] < 1e-4
    # the dense backbone is a different model: it must differ somewhere
    assert rep["references"]["dense"]["max_logit_diff"] > 1e-3
    assert rep["accuracy"] == rep["references"]["source"]["accuracy"]


def test_pytorch_source_checkpoint_is_not_its_own_reference(setup):
    d, ckpt, _ = setup
    rep = evaluate(_req(ckpt, d / "imgs", limit=8, **SCHEDULE)).to_dict()
    assert list(rep["references"]) == ["dense"]
    assert rep["images"] == 8 and rep["images_read"] + rep["skipped_unreadable"] == 8


def test_metrics_by_hand():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    model = np.array([[2.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    c = compare_logits(model, ref)
    assert c["top1_agreement"] == 50.0 and c["max_logit_diff"] == 3.0
    p = np.exp(ref[1]) / np.exp(ref[1]).sum()
    q = np.exp(model[1]) / np.exp(model[1]).sum()
    assert c["kl"] == pytest.approx((p * np.log(p / q)).sum() / 2)
    labels = np.array([1, 2])
    assert topk_accuracy(model, labels, 1) == 0.0
    assert topk_accuracy(model, labels, 2) == 100.0  # 1 is 2nd of row 0; 2 is 2nd of row 1


def test_manifest_per_artifact_name_and_reference(setup, tmp_path):
    d, ckpt, onnx = setup
    art = tmp_path / "copy.onnx"
    shutil.copy(onnx, art)
    # export writes the per-artifact manifest name (<artifact>.manifest.json)
    man = json.loads((d / "m.onnx.manifest.json").read_text())
    assert man["spec"]["source"] == str(ckpt)
    # the older stem name (<stem>.manifest.json) is read too
    (tmp_path / "copy.manifest.json").write_text(json.dumps({**man, "artifact": art.name}))
    rep = evaluate(_req(art, d / "imgs", limit=6)).to_dict()
    assert rep["references"]["source"]["top1_agreement"] == 100.0
    # a stem-named manifest of another artifact (copy.ort) is not taken for copy.onnx's
    (tmp_path / "copy.manifest.json").write_text(json.dumps({**man, "artifact": "copy.ort"}))
    with pytest.raises(EdgepruneError, match="no manifest"):
        evaluate(_req(art, d / "imgs", limit=6))
    (tmp_path / "copy.manifest.json").unlink()
    (tmp_path / "copy.onnx.manifest.json").write_text(json.dumps({**man, "artifact": art.name}))
    rep = evaluate(_req(art, d / "imgs", limit=6)).to_dict()
    assert rep["references"]["source"]["top1_agreement"] == 100.0
    # no manifest: the source is unknown unless --reference says it
    (tmp_path / "copy.onnx.manifest.json").unlink()
    with pytest.raises(EdgepruneError) as e:
        evaluate(_req(art, d / "imgs", limit=6))
    assert "no manifest" in e.value.one_line() and "--reference" in e.value.one_line()
    dense = write_dense(tmp_path / "dense.pth")
    rep = evaluate(_req(art, d / "imgs", limit=6, reference=str(dense))).to_dict()
    # another model as the reference: compared with it, not with the artifact's source
    assert set(rep["references"]) == {"reference"}
    assert rep["references"]["reference"]["max_logit_diff"] > 0


def test_evaluate_cli_json_and_errors(cli, setup, tmp_path):
    d, ckpt, onnx = setup
    code, out, err = cli(
        "evaluate", onnx, "--images", d / "imgs", "--limit", "4", "--json", "--heads", "2"
    )
    assert code == 0, err
    rep = json.loads(out)
    assert rep["images"] == 4 and rep["accuracy"]["top5"] >= rep["accuracy"]["top1"]
    (tmp_path / "empty").mkdir()
    code, out, err = cli("evaluate", onnx, "--images", tmp_path / "empty", "--heads", "2")
    assert code == 2 and err.strip().startswith("error:") and "no PNG/JPEG" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli("evaluate", onnx, "--images", d / "imgs", "--keep", "0.5")
    assert code == 2 and "apply to a SRC" in err
