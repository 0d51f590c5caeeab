"""A float32 ONNX graph as float16, with the numerically fragile ops kept in float32.

TensorRT 11 is strongly typed (no FP16 builder flag): the precision must be in the
ONNX itself. The conversion is onnxruntime's own
(``onnxruntime.transformers.float16.convert_float_to_float16``): the graph's input and
output stay float32 (a Cast at each end, ``keep_io_types``), and LayerNormalization,
Softmax, LogSoftmax and ReduceMean (``op_block_list``) keep float32 inputs and weights
behind Casts, since the reductions are where FP16 loses accuracy. TopK runs in float16
(the library's default block list would keep it and a dozen other ops in float32; the
list given here replaces that default).

One step is ours: the library appends the Casts of the graph input and output at the
end of the node list, which onnxruntime accepts but the ONNX standard (and
``onnx.checker``) does not; the nodes are put back in topological order with the
library's own ``OnnxModel.graph_topological_sort``. (Importing
``onnxruntime.transformers`` appends its folder to ``sys.path``, as that package does.)
"""

from __future__ import annotations

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

KEEP_FP32 = frozenset({"LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean"})


def to_fp16(proto: onnx.ModelProto, keep_fp32: frozenset[str] = KEEP_FP32) -> onnx.ModelProto:
    """A float16 copy of ``proto`` (``proto`` itself is left as it is); float32 graph
    I/O and the ``keep_fp32`` op types stay float32."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=sorted(keep_fp32))
    OnnxModel.graph_topological_sort(model.graph)
    onnx.checker.check_model(model)
    return model
