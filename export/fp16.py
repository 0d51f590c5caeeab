"""Convert a float32 ONNX graph to float16 with the numerically fragile ops kept in float32.

TensorRT 11 is strongly typed (no FP16 builder flag): the precision must be in the
ONNX itself. The graph's input and output stay float32 (a Cast at each end), every
float32 initializer, Constant and Cast target becomes float16, and the inputs of
LayerNormalization, Softmax, LogSoftmax and ReduceMean are cast back to float32
(their weights kept in float32), their outputs cast to float16 again — the
reductions are where FP16 loses accuracy. Written with ``onnx`` alone, so no extra
dependency (``onnxconverter-common`` does the same with a block list).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_FP32 = frozenset({"LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean"})


def to_fp16(proto, keep_fp32: frozenset[str] = KEEP_FP32):
    """A float16 copy of ``proto`` (ModelProto); float32 graph I/O is kept."""

    model = onnx.shape_inference.infer_shapes(proto)
    g = model.graph
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    types: dict[str, int] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    inits = {i.name: i for i in g.initializer}
    for name, t in inits.items():
        types[name] = t.data_type

    def is_float(name: str) -> bool:
        return types.get(name) == f32

    # graph outputs: the body writes "<name>__fp16", a final Cast writes the fp32 name
    out_names = {o.name: f"{o.name}__fp16" for o in g.output if is_float(o.name)}
    in_names = {i.name: f"{i.name}__fp16" for i in g.input if is_float(i.name)}
    nodes = [
        helper.make_node("Cast", [name], [new], to=f16, name=f"{name}_to_fp16")
        for name, new in in_names.items()
    ]
    fp32_copies: dict[str, onnx.TensorProto] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            node.input[i] = in_names.get(name, out_names.get(name, name))
        orig_outputs = list(node.output)
        for i, name in enumerate(node.output):
            node.output[i] = out_names.get(name, name)
        if node.op_type in keep_fp32:
            for i, name in enumerate(node.input):
                src = _orig(name, in_names, out_names)
                if not name or not is_float(src):
                    continue
                if src in inits:
                    if src not in fp32_copies:
                        fp32_copies[src] = numpy_helper.from_array(
                            numpy_helper.to_array(inits[src]).astype(np.float32), f"{src}__fp32"
                        )
                    node.input[i] = f"{src}__fp32"
                else:
                    cast_out = f"{name}__to_fp32_{node.name or id(node)}_{i}"
                    nodes.append(helper.make_node("Cast", [name], [cast_out], to=f32))
                    node.input[i] = cast_out
            nodes.append(node)
            for i, name in enumerate(node.output):
                if name and is_float(orig_outputs[i]):
                    node.output[i] = f"{name}__fp32"
                    nodes.append(helper.make_node("Cast", [f"{name}__fp32"], [name], to=f16))
            continue
        _retype_node(node, f32, f16)
        nodes.append(node)
    for name, new in out_names.items():
        nodes.append(helper.make_node("Cast", [new], [name], to=f32, name=f"{name}_to_fp32"))

    new_inits = []
    for t in g.initializer:
        if t.data_type == f32:
            new_inits.append(
                numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
            )
        else:
            new_inits.append(t)
    new_inits.extend(fp32_copies.values())
    del g.initializer[:]
    g.initializer.extend(new_inits)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model


def _orig(name: str, in_names: dict[str, str], out_names: dict[str, str]) -> str:
    for table in (in_names, out_names):
        for k, v in table.items():
            if v == name:
                return k
    return name


def _retype_node(node, f32: int, f16: int) -> None:
    """float32 constants and casts inside the fp16 region become float16."""

    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == f32:
            attr.i = f16
        elif attr.name == "value" and attr.t.data_type == f32:
            arr = numpy_helper.to_array(attr.t).astype(np.float16)
            attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
