"""FP32 ONNX -> strongly typed mixed-precision FP16 ONNX with ModelOpt AutoCast.

AutoCast (modelopt.onnx.autocast.convert_to_mixed_precision) does the conversion: it places the
Casts, keeps the graph valid and strongly typed, and keeps in FP32 the ops it cannot lower (Resize,
whose `scales` must be float32) and nodes with initializers beyond the FP16 range. Which other
nodes stay FP32 is decided here, from representative data, with AutoCast's own criterion:

Policy (every FP32 node is listed with its reason in the manifest, "fp32_nodes"):
  - Range rule: a node whose input or output exceeds |x| > FP16_DATA_MAX (512, AutoCast's
    default) on the real-propagation feeds stays FP32. The statistics come from one onnxruntime
    run exposing every tensor (tensor_absmax), not from AutoCast's reference runner, which
    re-runs onnxruntime's symbolic shape inference (sympy: 17 s for the tiny query encoder with
    symbolic H/W, minutes for the paper variant).
  - The soft aggregation (read_decoder's `/aggregate/` scope: sigmoid, prod, clamp(1e-7), log,
    softmax, argmax) is always FP32: 1 - 1e-7 rounds to 1 in FP16, so the logit would be inf.
  - The memory read's Add (affinity + empty-slot bias) and Softmax are judged on the valid slots
    only. The bias of an empty slot is spec.INVALID_SLOT_BIAS = -1e4, exact in FP16, and
    exp(-1e4) is 0 in both precisions, so it says nothing about overflow; counting it would
    always keep the attention in FP32 and break TensorRT's MatMul-Softmax-MatMul fusion. When the
    valid-slot affinities stay within FP16_DATA_MAX they are forced to FP16 ("fp16_kept"). With
    the L2 affinity (ModelConfig.similarity) the Q.K MatMul yields 2 q.k / sqrt(Ck), and that is
    what is compared; its -|k|^2 bias is computed outside the chain, under the range rule.
  - A read with a prior (ModelConfig.read_topk / read_kernel) has no fusable chain, so nothing is
    forced: the range rule keeps the nodes that carry the -1e4 bias (Adds, TopK, Where, Softmax)
    in FP32. What may run in FP16 stays finite: the ArgMax reads the affinities (<= 512 by the
    same rule); the kernel's positions are integers (exact up to 2048 in FP16) and a squared
    distance that overflows to inf becomes -inf, which the KERNEL_LOG_FLOOR clamp
    (model/memory.py) turns back into -500 per axis, so the kernel term lies in [-1000, 0].
Graph I/O dtypes follow spec.Precision.HALF_IO (AutoCast runs with keep_io_types, then
onnx_utils.retype_io switches the chosen I/O to float16 without extra Casts).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import onnx

from mlvos.errors import require
from mlvos.export.errors import ExportError
from mlvos.export.onnx_export import check_graph
from mlvos.export.onnx_utils import (
    find_attention,
    float_type_map,
    fp32_compute_nodes,
    retype_io,
    skeleton,
)
from mlvos.export.wrappers import ReadDecoderGraph
from mlvos.runtime.spec import AGG_EPS, INVALID_SLOT_BIAS, Graph, TensorSpec
from mlvos.runtime.spec import Tensor as T

FP16_DATA_MAX = 512.0


@dataclass
class Fp16Graph:
    """Result of convert_fp16.

    fp32_nodes / fp16_kept: {"name", "op", "reason"} of the nodes left computing in FP32, and of
    the nodes kept in FP16 although the plain range rule would keep them in FP32.
    fp32_outputs: outputs of the fp32 graph (onnxruntime) for each calibration feed.
    """

    model: onnx.ModelProto
    fp32_nodes: list[dict]
    fp16_kept: list[dict]
    fp32_outputs: list[dict[str, np.ndarray]]


_AGGREGATION_REASON = (
    f"soft aggregation: clamp({AGG_EPS:g}) and log need FP32 (1 - {AGG_EPS:g} rounds to 1 in FP16)"
)
# Ops AutoCast always leaves in FP32, and why.
_AUTOCAST_OPS = {
    "Resize": "AutoCast keeps Resize in FP32: its `scales` input must be float32 (ONNX spec) and "
    "AutoCast gives a node a single precision",
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
_SKIP_RE = re.compile(r"^Skipping node (\S+): (.*)$")


class _Capture(logging.Handler):
    """Collects AutoCast's per-node decisions ("Skipping node X: reason") from its logger."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = _SKIP_RE.match(record.getMessage())
        if m:
            self.reasons.setdefault(m.group(1), m.group(2))


def _not_from_modelopt(record: logging.LogRecord) -> bool:
    # AutoCast also logs through the root logger, e.g. that Range (int64 positions of the read's
    # kernel prior) has no float16 schema in opset 17, which is true and changes nothing here.
    return f"{os.sep}modelopt{os.sep}" not in record.pathname


@contextlib.contextmanager
def _autocast_logging():
    """Route AutoCast's logger (INFO, console handler of its own) into a capture handler only,
    and keep its root-logger warnings off the console."""
    capture = _Capture()
    loggers = [logging.getLogger("modelopt.onnx.autocast"), logging.getLogger("modelopt.onnx")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    root = logging.getLogger()
    try:
        for lg in loggers:
            lg.handlers = []
            lg.propagate = False
        loggers[0].handlers = [capture]
        loggers[0].setLevel(logging.INFO)
        root.addFilter(_not_from_modelopt)
        yield capture
    finally:
        root.removeFilter(_not_from_modelopt)
        for lg, handlers, level, propagate in saved:
            lg.handlers, lg.level, lg.propagate = handlers, level, propagate


def valid_affinity_absmax(feeds: list[dict[str, np.ndarray]]) -> float:
    """max |q.k / sqrt(Ck)| over the valid memory slots of read_decoder feeds (the Add/Softmax
    input of the memory read without the empty-slot bias)."""
    worst = 0.0
    for feed in feeds:
        q = feed[T.QUERY_KEY][0]  # (Ck, h, w)
        ck = q.shape[0]
        q = q.reshape(ck, -1).T.astype(np.float32) / math.sqrt(ck)  # (hw, Ck)
        keys, valid = feed[T.BANK_KEY], feed[T.BANK_VALID]
        for o in range(valid.shape[0]):
            for t in np.flatnonzero(valid[o] > 0.5):
                # an object-free key bank (1, T, ...) serves every object
                k = keys[min(o, keys.shape[0] - 1), t].reshape(ck, -1).astype(np.float32)
                worst = max(worst, float(np.abs(q @ k).max()))
    return worst


# Ops whose output range is bounded by their (float) inputs' range: their outputs are not
# fetched from onnxruntime, their max |x| is derived (Softmax: <= 1).
_RANGE_BOUNDED_OPS = {
    "Relu",
    "MaxPool",
    "Resize",
    "Clip",
    "Transpose",
    "Reshape",
    "Identity",
    "Squeeze",
    "Unsqueeze",
    "Expand",
    "Slice",
    "Gather",
    "Concat",
    "Flatten",
    "Softmax",
}
# Fetch at most this many bytes of intermediate tensors per onnxruntime run (the paper variant's
# memory encoder at 480x864 with 2 objects has several GB of activations).
_FETCH_BYTES = 1 << 31


def _tensor_bytes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """Size in bytes of every float tensor for the input shapes of `feed` (0 when unknown)."""
    sk = skeleton(model)
    for vi in sk.graph.input:
        if vi.name in feed:
            vi.type.tensor_type.shape.Clear()
            for d in feed[vi.name].shape:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    del sk.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(sk)
    sizes = {}
    for vi in inferred.graph.value_info:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        itemsize = 2 if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else 4
        sizes[vi.name] = int(np.prod(dims)) * itemsize if dims and all(dims) else 0
    return sizes


def tensor_absmax(
    model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]
) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
    """max |x| of every float tensor of `model` (graph inputs and node outputs) over `feeds`,
    and the graph outputs of each feed (onnxruntime CPU, graph optimizations off).

    The same statistic AutoCast's reference runner collects; computed here with onnxruntime
    sessions that expose the intermediate tensors, because AutoCast's own runner re-runs
    onnxruntime's symbolic shape inference, which takes minutes (sympy) on graphs with
    symbolic H/W. To bound memory, outputs of range-bounded ops are derived instead of fetched
    and the rest is fetched in runs of at most _FETCH_BYTES.
    """
    import onnxruntime as ort

    types = float_type_map(model)
    graph_outputs = [o.name for o in model.graph.output]
    fetch = list(graph_outputs)
    for node in model.graph.node:
        if node.op_type in _RANGE_BOUNDED_OPS:
            continue
        fetch += [o for o in node.output if o and types.get(o) in _FLOAT_TYPES and o not in fetch]
    sizes = _tensor_bytes(model, feeds[0]) if feeds else {}
    chunks: list[list[str]] = [[]]
    used = 0
    for name in fetch:
        if chunks[-1] and used + sizes.get(name, 0) > _FETCH_BYTES:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += sizes.get(name, 0)
    options = ort.SessionOptions()
    # Keep every tensor as the graph computes it: fused kernels would skip intermediates.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    sessions = []
    for chunk in chunks:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        declared = set(graph_outputs)
        for name in chunk:
            if name not in declared:
                probe.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, types[name], None)
                )
        sessions.append(
            ort.InferenceSession(
                probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        )
        del probe
    absmax: dict[str, float] = {}
    results = []

    def update(name: str, value: np.ndarray) -> None:
        if value.size and value.dtype.kind == "f":
            absmax[name] = max(absmax.get(name, 0.0), float(np.abs(value).max()))

    for feed in feeds:
        for name, value in feed.items():
            update(name, value)
        for chunk, session in zip(chunks, sessions, strict=True):
            values = session.run(chunk, feed)
            for name, value in zip(chunk, values, strict=True):
                update(name, value)
            if chunk is chunks[0]:
                results.append(dict(zip(graph_outputs, values[: len(graph_outputs)], strict=True)))
            del values
    # Derive the outputs of range-bounded ops, in graph (topological) order.
    for node in model.graph.node:
        if node.op_type in _RANGE_BOUNDED_OPS:
            bound = 1.0 if node.op_type == "Softmax" else 0.0
            if node.op_type != "Softmax":
                bound = max((absmax.get(t, 0.0) for t in node.input if t), default=0.0)
            for o in node.output:
                if o and types.get(o) in _FLOAT_TYPES and o not in absmax:
                    absmax[o] = bound
    return absmax, results


def convert_fp16(
    fp32_path: str | os.PathLike,
    *,
    graph: str,
    calibration: list[dict[str, np.ndarray]],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    opset: int,
    similarity: str = "dot",
    plain_attention: bool = True,
) -> Fp16Graph:
    """Convert one checked fp32 graph file to mixed FP16.

    Args:
        fp32_path: the fp32 .onnx of `graph`.
        calibration: representative feeds (fp32-export dtypes) from a real propagation.
        inputs / outputs: the fp16 I/O contract (io_spec.graph_io(..., "fp16")).
        opset: opset of the result (the fp32 graph's).
        similarity: the model's memory-read affinity (ModelConfig.similarity): "l2" doubles the
            Q.K product that the attention rule judges.
        plain_attention: the read_decoder must hold the fusable attention chain (False for a
            read with a prior: no chain is looked for or forced to FP16).

    Returns:
        Fp16Graph: the model, its FP32 nodes and reasons, and the fp32 graph's outputs on the
        calibration feeds (reused by the validation).

    Raises:
        MissingDependencyError: ModelOpt is not installed.
        ExportError: no calibration data, or the converted graph fails the ONNX/TensorRT checks.
    """
    require("modelopt.onnx.autocast", "export", "FP16 conversion (ModelOpt AutoCast)")
    from modelopt.onnx.autocast import convert_to_mixed_precision

    if not calibration:
        raise ExportError(f"no representative data for graph {graph!r}; cannot convert to FP16")
    fp32_model = onnx.load(os.fspath(fp32_path))
    reasons: dict[str, str] = {}  # node -> why it stays FP32 (our rules)
    include: dict[str, str] = {}  # node -> why it is FP16 although the range rule says FP32
    if graph == Graph.READ_DECODER and plain_attention:
        chain = find_attention(fp32_model)
        if chain is None:
            raise ExportError("read_decoder has no MatMul-Add-Softmax-MatMul attention chain")
        amax = valid_affinity_absmax(calibration) * (2.0 if similarity == "l2" else 1.0)
        if amax <= FP16_DATA_MAX:
            why = (
                f"memory-read attention: valid-slot affinities max |x| = {amax:.3g} <= "
                f"{FP16_DATA_MAX:g}; the empty-slot bias {INVALID_SLOT_BIAS:g} is exact in FP16 "
                "and exp() of it is 0"
            )
            include = {chain[1].name: why, chain[2].name: why}
    absmax, fp32_outputs = tensor_absmax(fp32_model, calibration)
    for node in fp32_model.graph.node:
        if node.op_type == "Constant" or node.name in include:
            continue
        if node.name.startswith(ReadDecoderGraph.aggregate_scope):
            reasons[node.name] = _AGGREGATION_REASON
            continue
        worst = max((absmax.get(t, 0.0) for t in [*node.input, *node.output] if t), default=0.0)
        if worst > FP16_DATA_MAX:
            reasons[node.name] = (
                f"representative data: max |x| = {worst:.3g} > {FP16_DATA_MAX:g} at its "
                "inputs/outputs (FP16 overflow / lost precision)"
            )
    with _autocast_logging() as log:
        try:
            # data_max=inf: no AutoCast reference run; the range rule was applied above.
            # init_max (FP16 range of initializers) stays AutoCast's default.
            model = convert_to_mixed_precision(
                onnx_path=os.fspath(fp32_path),
                low_precision_type="fp16",
                nodes_to_exclude=[f"^{re.escape(n)}$" for n in reasons],
                nodes_to_include=[f"^{re.escape(n)}$" for n in include],
                data_max=np.inf,
                keep_io_types=True,
                providers=["cpu"],
                opset=opset,
            )
        except Exception as e:  # AutoCast raises bare Exceptions/asserts
            raise ExportError(f"AutoCast FP16 conversion of {graph!r} failed: {e}") from e
    for spec in [*inputs, *outputs]:
        if spec.dtype == "float16":
            retype_io(model, spec.name, "float16")
    check_graph(model, graph, attention_required=False)
    fp32_nodes = []
    for node in fp32_compute_nodes(model):
        reason = reasons.get(node.name) or log.reasons.get(node.name)
        if reason is None:
            reason = _AUTOCAST_OPS.get(node.op_type, "AutoCast: op kept in FP32")
        fp32_nodes.append({"name": node.name, "op": node.op_type, "reason": reason})
    kept = [
        {"name": n.name, "op": n.op_type, "reason": include[n.name]}
        for n in model.graph.node
        if n.name in include
    ]
    return Fp16Graph(model, fp32_nodes, kept, fp32_outputs)
