"""Every method exports to a static ONNX graph that passes the parity check."""

import onnx
import pytest

from edgeprune.core.source import resolve
from edgeprune.export.onnx import export_onnx

SPECS = ["deit_tiny:spvit", "deit_tiny:evit@0.7", "deit_tiny:tome@r16"]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("spec", SPECS)
def test_export_static_with_parity(tmp_path, spec, batch):
    out = tmp_path / "m.onnx"
    man = export_onnx(resolve(spec), out, batch=batch, n_parity_inputs=batch)
    assert man["parity"]["passed"] and man["parity"]["max_abs_diff"] <= 1e-4
    proto = onnx.load(out)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Shape", "ConstantOfShape", "NonZero"}
    consts = {i.name for i in proto.graph.initializer}
    assert all(n.input[1] in consts for n in proto.graph.node if n.op_type == "TopK")
    assert man["token_plan"]["method"] == spec.split(":")[1].split("@")[0]
