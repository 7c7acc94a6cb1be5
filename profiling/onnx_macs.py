"""Multiply-accumulate (MAC) counts of exported ONNX graphs at concrete input sizes.

The count is shape-based: the graph's symbolic input dims ("O", "H", "H/16", ...) are bound to
numbers, `onnx.shape_inference` derives every tensor's shape, and the MACs of Conv,
ConvTranspose, MatMul and Gemm (and their integer/quantized forms) are summed. Other ops
(elementwise, Softmax, Resize, ...) are not counted, as in torch's FlopCounterMode, so the
numbers agree with mlvos.model.flops for the same stage.

onnx's data propagation does not fold every shape computation the exporter emits (torch's
`expand` becomes Shape -> Gather -> Concat -> Equal -> Where -> Expand), so small shape tensors
are folded here with onnx's reference evaluator and shape inference is repeated until nothing
changes. Weights are replaced by typed graph inputs first, so a 500 MB graph is inferred in
milliseconds.

onnx is imported lazily (pip install 'mlvos[export]').
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import InputError, require
from mlvos.profiling.errors import MacCountError
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph

# Ops whose MACs are counted (formulas in _node_macs).
COUNTED = (
    "Conv",
    "ConvTranspose",
    "ConvInteger",
    "QLinearConv",
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "Gemm",
)
# Compute-heavy ops that would be missed; reported so a count is never silently low.
UNCOUNTED_HEAVY = ("Einsum", "Attention", "MultiHeadAttention", "LSTM", "GRU", "RNN")
# Shape tensors are tiny; anything larger is data and is never folded.
_FOLD_MAX_ELEMENTS = 4096
_MAX_ROUNDS = 32
_DIM = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:([*/])\s*(\d+))?\s*$")


@dataclass(frozen=True)
class GraphMacs:
    """MACs of one graph at one binding of its symbolic dims.

    Attributes:
        macs: counted multiply-accumulates (integer).
        by_op: MACs per op type.
        dims: the binding used, e.g. {"H": 480, "W": 864, "O": 2}.
        uncounted: op types present whose cost is not counted (UNCOUNTED_HEAVY).
    """

    macs: int
    by_op: dict[str, int]
    dims: dict[str, int]
    uncounted: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _onnx():
    return require("onnx", "export", "counting MACs of ONNX graphs")


def eval_dim(expr: str, dims: dict[str, int]) -> int:
    """Value of a symbolic dim such as "H", "O" or "H/16" under `dims`.

    Raises:
        MacCountError: unknown symbol, or a form other than NAME, NAME/INT, NAME*INT.
    """
    m = _DIM.match(expr)
    if not m:
        raise MacCountError(
            f"symbolic dim {expr!r} is not of the form NAME, NAME/INT or NAME*INT; "
            "re-export the graph with mlvos export"
        )
    name, op, num = m.groups()
    if name not in dims:
        raise MacCountError(
            f"symbolic dim {expr!r} needs a value for {name!r}; given {sorted(dims)}"
        )
    v = int(dims[name])
    if op == "/":
        return v // int(num)
    if op == "*":
        return v * int(num)
    return v


_SKELETONS: dict[tuple[str, int, int], Any] = {}


def _skeleton(path: Path):
    """The graph with every large initializer turned into a typed graph input (no weights)."""
    onnx = _onnx()
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _SKELETONS:
        return _SKELETONS[key]
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    keep, moved = [], []
    for init in graph.initializer:
        small = int(np.prod(init.dims, dtype=np.int64)) <= _FOLD_MAX_ELEMENTS
        if small and init.data_location != onnx.TensorProto.EXTERNAL:
            keep.append(init)
        else:
            moved.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = {i.name for i in graph.input}
    graph.input.extend(v for v in moved if v.name not in inputs)
    _SKELETONS.clear()  # keep one: the profiler counts graph by graph
    _SKELETONS[key] = model
    return model


def _shapes(model) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in t.shape.dim
            ]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _known_shape(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _fold_round(model, shapes: dict[str, list[int | None]]) -> bool:
    """Fold nodes that compute small tensors from known values; True if any was folded."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    values = {
        i.name: numpy_helper.to_array(i)
        for i in g.initializer
        if int(np.prod(i.dims, dtype=np.int64)) <= _FOLD_MAX_ELEMENTS
    }
    outputs = {o.name for o in g.output}
    folded: list[Any] = []
    new_values: dict[str, np.ndarray] = {}
    for node in g.node:
        if any(o in outputs for o in node.output):
            continue
        ins = [i for i in node.input if i]
        result = None
        if node.op_type == "Shape" and _known_shape(shapes.get(node.input[0])):
            shape = np.array(shapes[node.input[0]], np.int64)
            attrs = {a.name: a.i for a in node.attribute}
            result = [shape[attrs.get("start", 0) : attrs.get("end", len(shape))]]
        elif node.op_type == "Size" and _known_shape(shapes.get(node.input[0])):
            result = [np.array(np.prod(shapes[node.input[0]]), np.int64)]
        elif node.op_type == "Constant" or (ins and all(i in values for i in ins)):
            try:
                result = ReferenceEvaluator(node).run(None, {i: values[i] for i in ins})
            except Exception:  # an op the reference evaluator lacks: leave it to inference
                result = None
        if result is None or any(np.asarray(r).size > _FOLD_MAX_ELEMENTS for r in result):
            continue
        for name, r in zip(node.output, result):
            values[name] = new_values[name] = np.asarray(r)
        folded.append(node)
    if not folded:
        return False
    for node in folded:
        g.node.remove(node)
    g.initializer.extend(numpy_helper.from_array(v, name) for name, v in new_values.items())
    # Folded outputs may have value_info entries; initializers carry their own type now.
    stale = [vi for vi in g.value_info if vi.name in new_values]
    for vi in stale:
        g.value_info.remove(vi)
    return True


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _node_macs(node, shapes) -> int | None:
    """MACs of one counted node, or None if a needed shape is unknown."""
    op = node.op_type

    def shape(i: int):
        s = shapes.get(node.input[i]) if i < len(node.input) else None
        return s if _known_shape(s) else None

    out = shapes.get(node.output[0])
    out = out if _known_shape(out) else None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(3 if op == "QLinearConv" else 1)
        return None if w is None or out is None else _prod(out) * _prod(w[1:])
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        return None if x is None or w is None else _prod(x) * _prod(w[1:])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape(0)
        return None if a is None or out is None else _prod(out) * a[-1]
    if op == "Gemm":
        a = shape(0)
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        if a is None or out is None:
            return None
        return _prod(out) * (a[0] if trans_a else a[-1])
    return 0


def graph_macs(path: str | os.PathLike, dims: dict[str, int]) -> GraphMacs:
    """Count the MACs of one ONNX graph with its symbolic input dims bound to `dims`.

    Args:
        path: ONNX file (external weight data is not read).
        dims: values of the symbolic names, e.g. {"H": 480, "W": 864, "O": 2} (H, W padded).

    Returns:
        GraphMacs with the total and per-op-type MACs.

    Raises:
        MissingDependencyError: onnx is not installed (pip install 'mlvos[export]').
        MacCountError: a dim name is unbound, or a counted node's shapes do not resolve.
    """
    onnx = _onnx()
    model = onnx.ModelProto()
    model.CopyFrom(_skeleton(Path(path)))
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                v = eval_dim(d.dim_param, dims)
                d.Clear()
                d.dim_value = v
    inferred = model
    for _ in range(_MAX_ROUNDS):
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        if not _fold_round(model, _shapes(inferred)):
            break
    shapes = _shapes(inferred)
    by_op: dict[str, int] = {}
    unresolved = []
    for node in inferred.graph.node:
        if node.op_type not in COUNTED:
            continue
        m = _node_macs(node, shapes)
        if m is None:
            unresolved.append(f"{node.op_type} {node.name or node.output[0]}")
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + m
    if unresolved:
        raise MacCountError(
            f"{path}: shapes of {len(unresolved)} counted node(s) did not resolve with dims "
            f"{dims} (e.g. {unresolved[:3]}); the graph may need more inputs bound"
        )
    heavy = tuple(sorted({n.op_type for n in inferred.graph.node if n.op_type in UNCOUNTED_HEAVY}))
    return GraphMacs(sum(by_op.values()), by_op, dict(dims), heavy)


def stage_macs(
    manifest: Manifest | str | os.PathLike,
    *,
    height: int,
    width: int,
    objects: int = 1,
    precision: str | None = None,
) -> dict[str, GraphMacs]:
    """MACs of the three graphs of an export at one padded frame size and object count.

    Args:
        manifest: export directory or its Manifest.
        height, width: padded frame size (multiples of the manifest's stride).
        objects: O, objects encoded into memory and read per frame.
        precision: graph file to count (default: fp32 if exported, else the first precision);
            MACs do not depend on it.

    Returns:
        {graph name: GraphMacs} for query_encoder (one frame), memory_encoder (O objects) and
        read_decoder (O objects, the full static bank).

    Raises:
        InputError: the size is not a multiple of the stride, or a static export of another size.
    """
    if not isinstance(manifest, Manifest):
        manifest = Manifest.load(manifest)
    stride = manifest.stride
    if height % stride or width % stride:
        raise InputError(
            f"{height}x{width} is not a multiple of the stride {stride}; pass the padded size "
            "(mlvos.runtime.spec.padded_size)"
        )
    static = manifest.static_size
    if static is not None and static != (height, width):
        raise InputError(
            f"the export is static at {static[0]}x{static[1]}; it cannot run {height}x{width}"
        )
    if precision is None:
        precs = manifest.precisions
        precision = "fp32" if "fp32" in precs else precs[0]
    dims = {"H": height, "W": width, "O": objects, "T": manifest.capacity}
    return {g: graph_macs(manifest.graph(g, precision, verify=False).path, dims) for g in Graph.ALL}
