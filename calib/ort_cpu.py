"""onnxruntime-CPU Q/DQ placement (quantize method "ort-cpu"): which nodes get Q/DQ, the
rewrites around onnxruntime's quantizer, the session options such graphs need, and what the CPU
provider makes of a Q/DQ graph.

Why INT8 ran slower than FP32 on onnxruntime CPU, and what "ort-cpu" changes (onnxruntime 1.32,
profiled per node on the tiny graphs; an x86 CPU with AVX512-VNNI):
  - onnxruntime computes in INT8 only where its graph optimizer turns DQ -> Conv -> Q into one
    QLinearConv (likewise Add -> QLinearAdd, LeakyRelu -> QLinearLeakyRelu). Everything else runs
    as DequantizeLinear -> the FP32 kernel -> QuantizeLinear: slower than FP32 alone, and the
    weights are dequantized again on every run.
  - ModelOpt places Q/DQ on a Conv's inputs only (TensorRT fuses the output side itself): no
    Conv output is quantized, so no QLinearConv forms. Its int8 query_encoder runs all 42
    convolutions as FP32 Conv/FusedConv behind 132 DequantizeLinear nodes.
  - x86 has fast kernels for uint8 activations x int8 weights only. onnxruntime converts a
    symmetric int8 Q -> DQ pair to uint8 (zero point 128) only when the Q feeds exactly one DQ
    (QDQS8ToU8Transformer); fusion refuses int8 activations on x86. Every tensor that feeds
    several nodes (residual streams, FPN laterals) therefore needs one Q -> DQ pair per consumer
    (dedicate_qdq_pairs), and onnxruntime's common-subexpression elimination, which merges those
    identical Q nodes again, must be off for these graphs (ORT_SESSION_CONFIG). With the "ort"
    placement, 10 of the query_encoder's 42 convolutions fused; with both, 41 (all but the first).
  - onnxruntime fuses no Relu into a QLinearConv unless the Q zero point is the type's minimum
    (asymmetric: TensorRT refuses it). "ort-cpu" writes each quantized Relu as the identical
    LeakyRelu(alpha=0), which onnxruntime runs as a 256-entry uint8 lookup table
    (QLinearLeakyRelu) instead of DequantizeLinear -> Relu -> QuantizeLinear.
  - Kept FP32 by placement, because INT8 does not pay there: the first convolutions (3 input
    channels: the INT8 kernel took 2x the FP32 one) and what follows them up to the next
    convolution; the memory read (MatMul, Softmax, its priors) and the soft aggregation (no Q/DQ
    on MatMul or on Adds outside the convolutional network). Resize and MaxPool inside the
    network get Q/DQ with their input's scale (onnxruntime runs MaxPool on uint8; a linear
    Resize stays an FP32 kernel between the pair).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import onnx

from mlvos.calib.errors import QuantizationError
from mlvos.export.onnx_utils import producers_consumers
from mlvos.export.wrappers import ReadDecoderGraph
from mlvos.runtime.spec import ORT_INT8_SESSION_CONFIG as ORT_SESSION_CONFIG
from mlvos.runtime.spec import Tensor as T

# Ops of the convolutional network whose output may feed a quantized Add ("ort-cpu").
_CONV_NET_OPS = ("Conv", "Relu", "LeakyRelu", "Add", "Resize", "MaxPool")


def reachable(start: list, step, stop) -> set[str]:
    """Names of the nodes reached from `start` by `step`, not expanding nodes where `stop`
    (also quantize.candidate_nodes' walk)."""
    seen, todo = set(), list(start)
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if stop(node):
            continue
        todo.extend(step(node))
    return seen


def cpu_int8_nodes(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> list[str]:
    """The nodes "ort-cpu" quantizes (module docstring), in graph order.

    Conv: every Conv with an initializer weight and one consumer, except `exclude` and the
    first convolutions of the image and probabilities (quantize.candidate_nodes' first_conv: 3 or 1
    input channels);
    Relu, Resize, MaxPool: those whose input comes from a quantized node (a Relu is written as
    LeakyRelu(alpha=0), see `relu_as_leaky`; Resize and MaxPool get the Q/DQ scale of their
    input); Add: those whose inputs all come from the convolutional network and at least one
    from a quantized node (residual and FPN sums; not the memory read's or the aggregation's
    arithmetic). Nothing in the soft aggregation's scope.
    """
    prod, cons = producers_consumers(model)
    weights = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    first = [n for name in (T.FRAME, T.PROBS) for n in cons.get(name, [])]
    stem = reachable(
        first,
        lambda n: [c for o in n.output for c in cons.get(o, [])],
        lambda n: n.op_type in ("Conv", "Shape", "Size"),
    )
    skip = set(exclude) | {
        n.name for n in model.graph.node if n.op_type == "Conv" and n.name in stem
    }
    scope = ReadDecoderGraph.aggregate_scope
    chosen: list[str] = []
    done: set[str] = set()
    for n in model.graph.node:  # topological order (ONNX requires it)
        if n.name in skip or n.name.startswith(scope):
            continue
        src = [prod.get(i) for i in n.input if i]
        if n.op_type == "Conv":
            # onnxruntime fuses a Conv only into a QLinearConv with one output Q; a Conv whose
            # output feeds several nodes would run in FP32 behind DequantizeLinear (slower than
            # leaving it FP32), since each consumer needs its own pair (dedicate_qdq_pairs).
            users = len(cons.get(n.output[0], [])) + (n.output[0] in outputs)
            ok = len(n.input) > 1 and n.input[1] in weights and users == 1
        elif n.op_type in ("Relu", "Resize", "MaxPool"):
            ok = src[0] is not None and src[0].name in done
        elif n.op_type == "Add":
            ok = (
                all(p is not None and p.op_type in _CONV_NET_OPS for p in src)
                and any(p.name in done for p in src)
            )
        else:
            ok = False
        if ok:
            chosen.append(n.name)
            done.add(n.name)
    return chosen


def relu_as_leaky(model: onnx.ModelProto, names: set[str]) -> None:
    """Rewrite the named Relu nodes as LeakyRelu(alpha=0) in place: the same function (exactly:
    max(x, 0 * x) = max(x, 0)), which onnxruntime runs in INT8 as QLinearLeakyRelu and TensorRT
    as an activation it fuses like Relu."""
    for n in model.graph.node:
        if n.op_type == "Relu" and n.name in names:
            n.op_type = "LeakyRelu"
            n.attribute.append(onnx.helper.make_attribute("alpha", 0.0))


def dedicate_qdq_pairs(model: onnx.ModelProto) -> int:
    """Give every consumer of a quantized activation its own QuantizeLinear -> DequantizeLinear
    pair, in place; returns the number of pairs added.

    onnxruntime uses its uint8 kernels only for a Q that feeds exactly one DQ (module
    docstring). The quantizer writes one pair per tensor (its DedicatedQDQPair option splits it
    among quantized consumers only: a tensor read by a quantized Conv and by an FP32 node would
    still share one), so a residual stream feeding three convolutions would run none in INT8.
    """
    weights = {i.name for i in model.graph.initializer}
    _, cons = producers_consumers(model)
    added = 0
    for q in list(model.graph.node):
        if q.op_type != "QuantizeLinear" or q.input[0] in weights:
            continue
        if any(dq.op_type != "DequantizeLinear" for dq in cons.get(q.output[0], [])):
            continue
        uses = [
            (dq, user, slot)
            for dq in cons.get(q.output[0], [])
            for user in cons.get(dq.output[0], [])
            for slot, name in enumerate(user.input)
            if name == dq.output[0]
        ]
        for k, (dq, user, slot) in enumerate(uses[1:], start=1):
            tag = f"_dedicated_{k}"
            q_out, dq_out = q.output[0] + tag, dq.output[0] + tag
            new_q = onnx.helper.make_node(
                "QuantizeLinear", [q.input[0], *q.input[1:]], [q_out], name=q.name + tag
            )
            new_q.attribute.extend(q.attribute)
            new_dq = onnx.helper.make_node(
                "DequantizeLinear", [q_out, *dq.input[1:]], [dq_out], name=dq.name + tag
            )
            new_dq.attribute.extend(dq.attribute)
            user.input[slot] = dq_out
            model.graph.node.append(new_q)
            model.graph.node.append(new_dq)
            added += 1
    if added:
        _toposort(model)
    return added


def _toposort(model: onnx.ModelProto) -> None:
    """Reorder the graph's nodes topologically, in place (ONNX requires it)."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    available.add("")
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise QuantizationError(  # a bug in the rewrite above, not a user error
                f"quantized graph has a cycle or a missing input at {[n.name for n in rest][:5]}"
            )
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def ort_session_options(threads: int | None = None):
    """onnxruntime SessionOptions for measuring INT8 graphs the way they should run
    (runtime.spec.ORT_INT8_SESSION_CONFIG; the runtime needs the same for "ort-cpu" graphs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in ORT_SESSION_CONFIG.items():
        opts.add_session_config_entry(key, value)
    return opts


def ort_cpu_kernels(model: onnx.ModelProto) -> dict[str, int]:
    """What onnxruntime's CPU provider makes of a Q/DQ graph (ORT_SESSION_CONFIG, all graph
    optimizations): how many convolutions run in INT8 kernels and how many in FP32 kernels
    behind DequantizeLinear (quantized in the file, yet computed in FP32: the slow case).

    Returns:
        {"int8_conv": QLinearConv nodes, "fp32_conv_after_dq": Conv/FusedConv nodes reading a
        DequantizeLinear output, "fp32_conv": every other Conv/FusedConv, "dequantize_linear":
        DequantizeLinear nodes left (each one runs on every inference)}.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="mlvos-ortopt-") as tmp:
        opts = ort_session_options(threads=1)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        # The file records layout rewrites (NCHWc, NHWC) that hold on this CPU only: read here,
        # never reused. onnxruntime warns about exactly that on every save.
        opts.log_severity_level = 3
        ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        optimized = onnx.load(opts.optimized_model_filepath)
    prod, _ = producers_consumers(optimized)
    counts = {"int8_conv": 0, "fp32_conv_after_dq": 0, "fp32_conv": 0, "dequantize_linear": 0}
    for n in optimized.graph.node:
        if n.op_type == "QLinearConv":
            counts["int8_conv"] += 1
        elif n.op_type in ("Conv", "FusedConv"):
            after_dq = n.input[0] in prod and prod[n.input[0]].op_type == "DequantizeLinear"
            counts["fp32_conv_after_dq" if after_dq else "fp32_conv"] += 1
        elif n.op_type == "DequantizeLinear":
            counts["dequantize_linear"] += 1
    return counts
