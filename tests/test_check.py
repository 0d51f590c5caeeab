"""``edgeprune check``: small graphs built to break each rule, and a real export (clean)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeprune.export.targets import check_onnx


def _graph(nodes, inits=(), in_shape=(1, 8), in_type=TensorProto.FLOAT, out_type=None):
    x = helper.make_tensor_value_info("x", in_type, list(in_shape))
    y = helper.make_tensor_value_info("y", out_type or in_type, None)
    g = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _topk(k_value=None, sorted_=1, computed=False):
    nodes, inits = [], []
    if computed:
        nodes.append(helper.make_node("Shape", ["x"], ["s"]))
        nodes.append(helper.make_node("Slice", ["s", "one", "two"], ["k"]))
        inits += [
            numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("one", 1), ("two", 2))
        ]
    else:
        inits.append(numpy_helper.from_array(np.array([k_value], np.int64), "k"))
    nodes.append(helper.make_node("TopK", ["x", "k"], ["y", "i"], sorted=sorted_))
    return _graph(nodes, inits, in_shape=(1, 5000))


def rules(proto, target):
    return {(f.severity, f.rule) for f in check_onnx(proto, target)}


def test_clean_topk_graph():
    for t in ("trt", "coreml", "ort"):
        assert check_onnx(_topk(3), t) == []


def test_topk_k_not_constant():
    assert ("error", "TopK K not constant") in rules(_topk(computed=True), "trt")
    assert ("error", "TopK K not constant") in rules(_topk(computed=True), "coreml")


def test_topk_k_too_large_on_trt_only():
    assert rules(_topk(4000), "trt") == {("error", "TopK K too large")}
    assert rules(_topk(4000), "ort") == set()


def test_unsorted_topk_on_trt():
    assert rules(_topk(3, sorted_=0), "trt") == {("error", "unsorted TopK")}


def test_dynamic_dimension():
    m = _graph([helper.make_node("Relu", ["x"], ["y"])], in_shape=("batch", 8))
    assert rules(m, "trt") == {("slow", "dynamic dimension")}
    assert rules(m, "coreml") == {("error", "dynamic dimension")}


def test_int64_io_on_coreml():
    m = _graph([helper.make_node("Identity", ["x"], ["y"])], in_type=TensorProto.INT64)
    assert rules(m, "coreml") == {("error", "int64 tensor")}
    assert rules(m, "trt") == set()
    big = numpy_helper.from_array(np.array([2**40], np.int64), "big")
    m = _graph([helper.make_node("Add", ["x", "big"], ["y"])], [big], in_type=TensorProto.FLOAT)
    assert rules(m, "coreml") == {("error", "int64 tensor")}


def test_unsupported_ops():
    nms = helper.make_node("NonMaxSuppression", ["x", "x"], ["y"])
    assert ("error", "unsupported op") in rules(_graph([nms]), "trt")
    custom = helper.make_node("Magic", ["x"], ["y"], domain="com.example")
    m = _graph([custom])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    for t in ("trt", "coreml", "ort"):
        assert ("error", "unsupported op") in rules(m, t)
    nz = _graph([helper.make_node("NonZero", ["x"], ["y"])], out_type=TensorProto.INT64)
    assert ("slow", "slow op") in rules(nz, "trt")


def test_real_export_is_clean_and_cli_exit_codes(cli, tmp_path):
    from edgeprune.core.source import resolve
    from edgeprune.export.onnx import verified_onnx

    v = verified_onnx(resolve("deit_tiny:dynamicvit@0.7"), n_parity_inputs=1)
    good = tmp_path / "m.onnx"
    good.write_bytes(v.data)
    for t in ("trt", "coreml", "ort"):
        code, out, _ = cli("check", good, "--target", t)
        assert code == 0 and "clean" in out
    bad = tmp_path / "bad.onnx"
    onnx.save(_topk(3, sorted_=0), bad)
    code, out, err = cli("check", bad, "--target", "trt")
    assert code == 1 and "unsorted TopK" in out
    code, _, err = cli("check", bad, "--target", "tflite")
    assert code == 2 and "unknown target" in err
    code, _, err = cli("check", tmp_path / "nope.onnx")
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("garbage", [b"", b"not a model"])
def test_check_rejects_non_onnx(cli, tmp_path, garbage):
    f = tmp_path / "x.onnx"
    f.write_bytes(garbage + b"\xff\xfe")
    code, _, err = cli("check", f)
    assert code == 2 and err.startswith("error:")
