import json

import numpy as np
import onnx
import pytest
import torch

from edgeprune.core.errors import ParityError
from edgeprune.core.source import resolve
from edgeprune.export.manifest import sha256_file
from edgeprune.export.onnx import export_onnx
from edgeprune.runtimes.onnxruntime import make_session, run


@pytest.mark.parametrize("batch", [1, 4])
def test_export_dynamicvit_static_graph_with_parity(tmp_path, batch):
    out = tmp_path / "m.onnx"
    src = resolve("deit_tiny:dynamicvit@0.7")
    man = export_onnx(src, out, batch=batch)
    proto = onnx.load(out)
    ops = [n.op_type for n in proto.graph.node]
    for bad in ("Shape", "ConstantOfShape", "NonZero"):
        assert bad not in ops
    assert ops.count("TopK") == 3
    consts = {i.name for i in proto.graph.initializer}
    assert all(n.input[1] in consts for n in proto.graph.node if n.op_type == "TopK")
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [
        batch,
        3,
        224,
        224,
    ]
    saved = json.loads((tmp_path / "m.onnx.manifest.json").read_text())
    assert saved == man
    assert saved["sha256"] == sha256_file(out)
    assert saved["parity"]["inputs"] >= 16 and saved["parity"]["top1_agreement"] == 1.0
    assert saved["parity"]["max_abs_diff"] <= 1e-4
    assert saved["token_plan"]["tokens_per_block"] == [197] * 3 + [138] * 3 + [97] * 3 + [68] * 3
    assert saved["opset"] == 17 and saved["versions"]["onnxruntime"]
    # the artifact really is the model: a fresh input through onnxruntime matches PyTorch
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        ref = src.model()(x).numpy()
    got = run(make_session(out), x.numpy())
    assert np.abs(ref - got).max() <= 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parity_failure_leaves_nothing(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError, match="differs"):
        export_onnx(resolve("deit_tiny"), out, atol=0.0, n_parity_inputs=1)
    assert list(tmp_path.iterdir()) == []
