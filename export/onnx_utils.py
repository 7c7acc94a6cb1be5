"""Small ONNX graph helpers shared by export, FP16 conversion and validation (onnx only)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from mlvos.export.errors import ExportError
from mlvos.runtime.spec import TensorSpec

NP_TO_ONNX = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "uint8": TensorProto.UINT8,
    "int64": TensorProto.INT64,
}
ONNX_TO_NP = {v: k for k, v in NP_TO_ONNX.items()}
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def stamp_graph(model: onnx.ModelProto, *, graph: str, precision: str, checkpoint_sha256: str):
    """Identify a graph file on its own: mlvos.* entries of the ONNX metadata_props (replaced)."""
    from mlvos import __version__

    props = {
        "mlvos.version": __version__,
        "mlvos.graph": graph,
        "mlvos.precision": precision,
        "mlvos.checkpoint_sha256": checkpoint_sha256,
    }
    kept = [p for p in model.metadata_props if not p.key.startswith("mlvos.")]
    del model.metadata_props[:]
    for p in kept:
        model.metadata_props.add(key=p.key, value=p.value)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def io_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The (inputs, outputs) a model file declares, as TensorSpecs (dim_param strings or ints)."""

    def one(vi) -> TensorSpec:
        tt = vi.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim)
        return TensorSpec(vi.name, ONNX_TO_NP.get(tt.elem_type, str(tt.elem_type)), dims)

    inits = {i.name for i in model.graph.initializer}
    return [one(i) for i in model.graph.input if i.name not in inits], [
        one(o) for o in model.graph.output
    ]


def set_io(model: onnx.ModelProto, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Write dtypes and (symbolic) shapes of the graph I/O from the contract, in place.

    The exporter names output dims after internal nodes ("Convquery_key_dim_2"); the contract's
    names ("H/16") are what the runtime and the manifest use.
    """
    by_name = {s.name: s for s in [*inputs, *outputs]}
    for vi in [*model.graph.input, *model.graph.output]:
        s = by_name.get(vi.name)
        if s is None:
            raise ExportError(f"graph I/O {vi.name!r} is not in the contract {sorted(by_name)}")
        vi.CopyFrom(helper.make_tensor_value_info(s.name, NP_TO_ONNX[s.dtype], list(s.shape)))


def producers_consumers(model: onnx.ModelProto):
    prod, cons = {}, defaultdict(list)
    for n in model.graph.node:
        for o in n.output:
            prod[o] = n
        for i in n.input:
            cons[i].append(n)
    return prod, cons


def find_attention(model: onnx.ModelProto) -> tuple[onnx.NodeProto, ...] | None:
    """The memory read's MatMul -> Add -> Softmax(last axis) -> MatMul chain, or None.

    TensorRT fuses this pattern (with the 1/sqrt(Ck) scale applied to Q before the first MatMul)
    into one attention kernel; a Cast or any other node inside the chain prevents it, and so does
    any other consumer of the affinities (the fused kernel never materializes them): a read with
    a prior (ModelConfig.read_topk / read_kernel) has no such chain.
    """
    prod, cons = producers_consumers(model)
    for sm in model.graph.node:
        if sm.op_type != "Softmax":
            continue
        axis = next((helper.get_attribute_value(a) for a in sm.attribute if a.name == "axis"), -1)
        add = prod.get(sm.input[0])
        if add is None or add.op_type != "Add" or len(cons.get(add.output[0], [])) != 1:
            continue
        mm1 = next((prod[i] for i in add.input if i in prod and prod[i].op_type == "MatMul"), None)
        after = cons.get(sm.output[0], [])
        if mm1 is None or len(after) != 1 or after[0].op_type != "MatMul":
            continue
        if len(cons.get(mm1.output[0], [])) != 1:
            continue
        if axis not in (-1, 2):  # (O, hw, Thw): last axis
            continue
        return mm1, add, sm, after[0]
    return None


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the data of large initializers (dims and dtypes kept): type and shape
    inference give the same result on it, in milliseconds instead of seconds for 100 MB graphs."""
    sk = onnx.ModelProto()
    sk.CopyFrom(model)
    for init in sk.graph.initializer:
        if len(init.raw_data) > 4096:
            init.ClearField("raw_data")
    return sk


def float_type_map(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> elem_type for every typed tensor (after shape/type inference)."""
    inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    types = {}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    for n in inferred.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def fp32_compute_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes (other than Cast) that read or write a float32 tensor: they compute in FP32."""
    types = float_type_map(model)
    out = []
    for n in model.graph.node:
        if n.op_type in ("Cast", "Constant", "Shape"):
            continue
        tensors = [t for t in [*n.input, *n.output] if t]
        if any(types.get(t) == TensorProto.FLOAT for t in tensors):
            out.append(n)
    return out


def retype_io(model: onnx.ModelProto, name: str, dtype: str) -> None:
    """Change one graph input's or output's float dtype, keeping the graph's internal types.

    Input: Casts that converted it to `dtype` are bypassed; other float consumers get a Cast
    back to the old type. Output: a Cast that produced it from a `dtype` tensor is removed (its
    source is renamed to the output); otherwise a Cast to `dtype` is appended.
    """
    new = NP_TO_ONNX[dtype]
    prod, cons = producers_consumers(model)
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    if name in inputs:
        vi = inputs[name]
        old = vi.type.tensor_type.elem_type
        if old == new:
            return
        vi.type.tensor_type.elem_type = new
        back = None
        for node in cons.get(name, []):
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type == "Cast" and to == new:
                for other in cons.get(node.output[0], []):
                    for k, t in enumerate(other.input):
                        if t == node.output[0]:
                            other.input[k] = name
                for o in graph.output:  # a cast that fed a graph output directly
                    if o.name == node.output[0]:
                        raise ExportError(
                            f"cannot retype {name}: it feeds output {o.name} directly"
                        )
                graph.node.remove(node)
            elif node.op_type in ("Shape", "Size"):
                continue
            else:
                if back is None:
                    back = helper.make_node(
                        "Cast",
                        [name],
                        [f"{name}_to_{ONNX_TO_NP[old]}"],
                        name=f"{name}_to_{ONNX_TO_NP[old]}",
                        to=old,
                    )
                    graph.node.insert(0, back)
                for k, t in enumerate(node.input):
                    if t == name:
                        node.input[k] = back.output[0]
    elif name in outputs:
        vi = outputs[name]
        old = vi.type.tensor_type.elem_type
        if old == new:
            return
        src = prod.get(name)
        types = float_type_map(model)
        if src is not None and src.op_type == "Cast" and types.get(src.input[0]) == new:
            inner = src.input[0]
            graph.node.remove(src)
            for n in graph.node:
                for k, t in enumerate(n.output):
                    if t == inner:
                        n.output[k] = name
                for k, t in enumerate(n.input):
                    if t == inner:
                        n.input[k] = name
        else:
            internal = f"{name}_{ONNX_TO_NP[old]}"
            for n in graph.node:
                for k, t in enumerate(n.output):
                    if t == name:
                        n.output[k] = internal
                for k, t in enumerate(n.input):
                    if t == name:
                        n.input[k] = internal
            graph.node.append(
                helper.make_node("Cast", [internal], [name], name=f"{name}_cast", to=new)
            )
        vi.type.tensor_type.elem_type = new
    else:
        raise ExportError(f"{name!r} is not a graph input or output")
    # Stale value_info of renamed/retyped tensors would contradict the new types.
    del graph.value_info[:]


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write one self-contained .onnx file (weights inside; every graph here is far below 2 GB)."""
    Path(path).write_bytes(model.SerializeToString(deterministic=True))
