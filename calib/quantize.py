"""FP32 graph + recorded feeds -> INT8 Q/DQ graph, with an existing quantizer; output error vs
FP32; the parts of the network a graph keeps in FP32.

Quantizer (`method`):
  - "modelopt" (default): NVIDIA ModelOpt ONNX PTQ, `modelopt.onnx.quantization.quantize(...,
    quantize_mode="int8", calibration_eps=["cpu"])`. Chosen because it is the quantizer NVIDIA
    supports for TensorRT's explicit quantization: it places Q/DQ by TensorRT's fusion rules
    (Conv+Add+Relu groups, residual Adds, no Q/DQ on small-channel convs or on MHA MatMuls with
    sequence length > 512), writes symmetric INT8 (zero point 0) with per-channel weights, and
    runs here on the CPU (onnxruntime calibrators). `high_precision_dtype="fp32"`: nodes it does
    not quantize stay FP32, so the INT8 graphs keep the FP32 graphs' I/O contract and the soft
    aggregation's FP32 math (1 - 1e-7 is 1 in FP16, see export/fp16.py).
  - "ort": onnxruntime `quantize_static` in QDQ format, Conv and MatMul only, per-channel
    symmetric INT8 weights, symmetric INT8 activations (ActivationSymmetric=True: zero point 0,
    which TensorRT requires), biases left FP32. The fallback, and a cross-check: it is the
    calibration engine ModelOpt itself drives, without TensorRT's placement rules.
  - "ort-cpu": the same quantizer and Q/DQ format (symmetric, per-channel: still TensorRT
    explicit quantization), with Q/DQ placed so that onnxruntime's CPU provider runs the
    convolutional network in INT8 kernels instead of FP32 kernels between Q/DQ pairs (see below).
All take the recorded feeds through one CalibrationDataReader (samples differ in object count
and frame size, so they cannot be stacked into one array as ModelOpt's npz path requires).

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
    (_dedicate_qdq_pairs), and onnxruntime's common-subexpression elimination, which merges those
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

One ModelOpt step is bypassed (_fast_modelopt): before quantizing, it re-derives every graph
output's shape with onnxruntime's symbolic shape inference to repair stale shapes of weakly typed
models. On these graphs (dynamic H/W through Resize) sympy spends 20 s of a 23 s quantization of
the tiny query encoder on it (measured), minutes for the paper variant, and the result is
discarded: the export wrote exact output shapes (export.onnx_utils.set_io), restored below too.

Candidates kept in FP32 (constants.CANDIDATES; nodes found by candidate_nodes):
  first_conv   the convolutions reading the network input (normalized pixels, probabilities);
  attention    the memory read: MatMul -> Add(empty-slot bias) -> Softmax -> MatMul;
  aggregation  the soft aggregation (sigmoid, prod, clamp, logit, softmax, argmax);
  logits_conv  the decoder's last convolution (the per-object logits).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from mlvos.calib.constants import CANDIDATES
from mlvos.calib.errors import QuantizationError
from mlvos.errors import require
from mlvos.export.onnx_utils import find_attention, io_specs, producers_consumers, set_io
from mlvos.export.wrappers import ReadDecoderGraph
from mlvos.runtime.spec import ORT_INT8_SESSION_CONFIG as ORT_SESSION_CONFIG
from mlvos.runtime.spec import Graph
from mlvos.runtime.spec import Tensor as T

Feed = dict[str, np.ndarray]
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

# Outputs whose error decides the keep-in-FP32 choices (all outputs are reported). The read's
# logits are unbounded and matter only through obj_probs (soft aggregation), which decides the
# labels.
SCORED_OUTPUTS: dict[str, tuple[str, ...]] = {
    Graph.QUERY_ENCODER: (T.QUERY_KEY, T.QUERY_VALUE, T.SKIP8, T.SKIP4),
    Graph.MEMORY_ENCODER: (T.MEM_KEY, T.MEM_VALUE),
    Graph.READ_DECODER: (T.OBJ_PROBS,),
}


def _calibration_reader(feeds: list[Feed]):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        """The recorded feeds, one per calibration step (shapes may differ between steps)."""

        def __init__(self):
            self.index = 0

        def get_next(self) -> Feed | None:
            if self.index >= len(feeds):
                return None
            self.index += 1
            return feeds[self.index - 1]

        def get_first(self) -> Feed:  # ModelOpt's shape probes
            return feeds[0]

        def rewind(self) -> None:
            self.index = 0

    return FeedReader()


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture the quantizers' console output (progress bars, per-tensor prints, ModelOpt's
    logger and its "NVML not found" error on GPU-less machines); yield the captured text."""
    buf = io.StringIO()
    # onnxruntime.quantization logs through the root logger ("consider pre-processing").
    loggers = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "")]
    saved = [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    try:
        for lg in loggers:
            lg.handlers = [logging.StreamHandler(buf)]
            lg.propagate = False
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate, lg.level = handlers, propagate, level


@contextlib.contextmanager
def _fast_modelopt() -> Iterator[None]:
    """Skip ModelOpt's symbolic re-derivation of graph output shapes (see module docstring)."""
    import modelopt.onnx.utils as mo_utils

    original = getattr(mo_utils, "_reconcile_stale_output_shapes", None)
    if original is None:  # another ModelOpt version: nothing to bypass
        yield
        return
    mo_utils._reconcile_stale_output_shapes = lambda model: 0
    try:
        yield
    finally:
        mo_utils._reconcile_stale_output_shapes = original


@contextlib.contextmanager
def _scoped_ort_patches() -> Iterator[None]:
    """Undo, on exit, ModelOpt's patches of onnxruntime's quantization classes.

    ModelOpt replaces methods of onnxruntime's calibrators and quantizers for the whole process
    (ort_patching.patch_ort_modules) and never restores them; a later plain `quantize_static`
    (method "ort") then fails ("Quantization parameters are not specified ..."), measured.
    """
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer

    classes = [
        calibrate.CalibraterBase,
        calibrate.MinMaxCalibrater,
        calibrate.HistogramCalibrater,
        calibrate.HistogramCollector,
        qdq_quantizer.QDQQuantizer,
        base_quantizer.BaseQuantizer,
    ]
    saved = [(cls, dict(vars(cls))) for cls in classes]
    create = calibrate.create_calibrator
    try:
        yield
    finally:
        calibrate.create_calibrator = create
        for cls, attrs in saved:
            for name in set(vars(cls)) - set(attrs):
                delattr(cls, name)
            for name, value in attrs.items():
                if vars(cls).get(name) is not value:
                    setattr(cls, name, value)


def _exact(names: Sequence[str]) -> list[str]:
    """ModelOpt takes node-name regexes: match these names exactly."""
    return [f"^{re.escape(n)}$" for n in names]


# Ops of the convolutional network whose output may feed a quantized Add ("ort-cpu").
_CONV_NET_OPS = ("Conv", "Relu", "LeakyRelu", "Add", "Resize", "MaxPool")


def cpu_int8_nodes(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> list[str]:
    """The nodes "ort-cpu" quantizes (module docstring), in graph order.

    Conv: every Conv with an initializer weight and one consumer, except `exclude` and the
    first convolutions of the image and probabilities (candidate_nodes' first_conv: 3 or 1
    input channels);
    Relu, Resize, MaxPool: those whose input comes from a quantized node (a Relu is written as
    LeakyRelu(alpha=0), see `_relu_as_leaky`; Resize and MaxPool get the Q/DQ scale of their
    input); Add: those whose inputs all come from the convolutional network and at least one
    from a quantized node (residual and FPN sums; not the memory read's or the aggregation's
    arithmetic). Nothing in the soft aggregation's scope.
    """
    prod, cons = producers_consumers(model)
    weights = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    first = [n for name in (T.FRAME, T.PROBS) for n in cons.get(name, [])]
    stem = _reachable(
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
            # leaving it FP32), since each consumer needs its own pair (_dedicate_qdq_pairs).
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


def _relu_as_leaky(model: onnx.ModelProto, names: set[str]) -> None:
    """Rewrite the named Relu nodes as LeakyRelu(alpha=0) in place: the same function (exactly:
    max(x, 0 * x) = max(x, 0)), which onnxruntime runs in INT8 as QLinearLeakyRelu and TensorRT
    as an activation it fuses like Relu."""
    for n in model.graph.node:
        if n.op_type == "Relu" and n.name in names:
            n.op_type = "LeakyRelu"
            n.attribute.append(onnx.helper.make_attribute("alpha", 0.0))


def _dedicate_qdq_pairs(model: onnx.ModelProto) -> int:
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


def quantize_model(
    fp32_path: str | os.PathLike,
    feeds: list[Feed],
    *,
    method: str,
    calibrator: str,
    exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """Quantize one FP32 graph file to INT8 Q/DQ.

    Args:
        fp32_path: the graph's fp32 .onnx (read only; the quantizers work in a temporary folder).
        feeds: calibration feeds (fp32-export dtypes), one per step.
        method: "modelopt", "ort" or "ort-cpu" (module docstring).
        calibrator: "entropy" or "max" (activation ranges).
        exclude: node names that must stay unquantized (no Q/DQ on their inputs).

    Returns:
        The Q/DQ model with the FP32 graph's I/O contract.

    Raises:
        MissingDependencyError: the quantizer's package is not installed.
        QuantizationError: the quantizer failed (its log tail is in the message).
    """
    fp32_path = Path(fp32_path)
    if method == "modelopt":
        require("modelopt.onnx.quantization", "export", "INT8 calibration (ModelOpt ONNX PTQ)")
    else:
        require("onnxruntime.quantization", "ort", "INT8 calibration (onnxruntime)")
    with tempfile.TemporaryDirectory(prefix="mlvos-calib-") as tmp:
        src = Path(tmp) / "model.onnx"
        dst = Path(tmp) / "model.int8.onnx"
        chosen: list[str] | None = None
        if method in ("ort", "ort-cpu"):
            # onnxruntime's calibrator finds the float tensors to calibrate from value_info;
            # the exported files carry none (export.onnx_export drops the exporter's).
            source = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(fp32_path)))
            if method == "ort-cpu":
                chosen = cpu_int8_nodes(source, exclude)
                _relu_as_leaky(source, set(chosen))
            onnx.save(source, src)
        else:
            src.write_bytes(fp32_path.read_bytes())
        reader = _calibration_reader(feeds)
        with _quiet() as log:
            try:
                if method == "modelopt":
                    from modelopt.onnx.quantization import quantize

                    with _fast_modelopt(), _scoped_ort_patches():
                        quantize(
                            onnx_path=os.fspath(src),
                            quantize_mode="int8",
                            calibration_data_reader=reader,
                            calibration_method=calibrator,
                            calibration_eps=["cpu"],
                            nodes_to_exclude=_exact(exclude),
                            high_precision_dtype="fp32",
                            output_path=os.fspath(dst),
                            log_level="WARNING",
                        )
                elif method in ("ort", "ort-cpu"):
                    from onnxruntime.quantization import (
                        CalibrationMethod,
                        QuantFormat,
                        QuantType,
                        quantize_static,
                    )

                    cpu = method == "ort-cpu"
                    quantize_static(
                        os.fspath(src),
                        os.fspath(dst),
                        reader,
                        quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=(
                            ["Conv", "LeakyRelu", "Add", "Resize", "MaxPool"]
                            if cpu
                            else ["Conv", "MatMul"]
                        ),
                        per_channel=True,
                        activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        nodes_to_quantize=chosen,
                        nodes_to_exclude=list(exclude),
                        calibrate_method=(
                            CalibrationMethod.Entropy
                            if calibrator == "entropy"
                            else CalibrationMethod.MinMax
                        ),
                        extra_options={
                            "ActivationSymmetric": True,
                            "WeightSymmetric": True,
                            "QuantizeBias": False,
                        },
                    )
                else:
                    raise QuantizationError(f"unknown quantization method {method!r}")
            except QuantizationError:
                raise
            except Exception as e:  # the quantizers raise bare Exceptions / asserts
                tail = "\n".join(log.getvalue().strip().splitlines()[-15:])
                raise QuantizationError(
                    f"{method} INT8 quantization of {fp32_path.name} failed: "
                    f"{type(e).__name__}: {e}\n{tail}"
                ) from e
        if not dst.is_file():
            raise QuantizationError(f"{method} wrote no quantized model for {fp32_path.name}")
        model = onnx.load(os.fspath(dst))
    if method == "ort-cpu":
        _dedicate_qdq_pairs(model)
    fp32_model = onnx.load(os.fspath(fp32_path), load_external_data=False)
    set_io(model, *io_specs(fp32_model))
    return model


# ------------------------------------------------------------------------------ graph queries
def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes that read a DequantizeLinear output (they run in INT8)."""
    prod, _ = producers_consumers(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in QDQ_OPS
        and any(t in prod and prod[t].op_type == "DequantizeLinear" for t in n.input)
    ]


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Q/DQ counts and zero-point facts of a quantized model.

    Returns:
        {"quantize_linear", "dequantize_linear", "zero_point_dtypes", "nonzero_zero_points"}:
        nonzero_zero_points lists the Q/DQ nodes whose zero point is not all zeros.
    """
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    counts = {op: 0 for op in QDQ_OPS}
    dtypes: set[str] = set()
    nonzero: list[str] = []
    for n in model.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        counts[n.op_type] += 1
        if len(n.input) < 3 or not n.input[2]:
            dtypes.add("uint8 (default, zero point 0)")  # spec default: uint8 zero point 0
            nonzero.append(n.name)  # uint8 is asymmetric by construction: TensorRT refuses it
            continue
        zp = consts.get(n.input[2])
        if zp is None:
            nonzero.append(n.name)
            continue
        dtypes.add(str(zp.dtype))
        if zp.dtype != np.int8 or np.any(zp != 0):
            nonzero.append(n.name)
    return {
        "quantize_linear": counts["QuantizeLinear"],
        "dequantize_linear": counts["DequantizeLinear"],
        "zero_point_dtypes": sorted(dtypes),
        "nonzero_zero_points": nonzero,
    }


def _reachable(start: list, step, stop) -> set[str]:
    """Names of the nodes reached from `start` by `step`, not expanding nodes where `stop`."""
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


def candidate_nodes(model: onnx.ModelProto, graph: str) -> dict[str, list[str]]:
    """Node names of every candidate that exists in `graph` (see module docstring).

    first_conv: Convs reachable from a graph input without crossing another Conv;
    logits_conv: Convs from which the logits output is reachable without crossing another Conv.
    """
    prod, cons = producers_consumers(model)
    inputs = {i.name for i in model.graph.input}
    out: dict[str, list[str]] = {}

    def is_conv(n) -> bool:
        return n.op_type == "Conv"

    def stop(n) -> bool:  # shape arithmetic is not the data path
        return n.op_type in ("Conv", "Shape", "Size")

    if graph in (Graph.QUERY_ENCODER, Graph.MEMORY_ENCODER):
        first = [n for name in inputs for n in cons.get(name, [])]
        names = _reachable(first, lambda n: [c for o in n.output for c in cons.get(o, [])], stop)
        by_name = {n.name: n for n in model.graph.node}
        out["first_conv"] = sorted(n for n in names if is_conv(by_name[n]))
    if graph == Graph.READ_DECODER:
        chain = find_attention(model)
        if chain is not None:
            out["attention"] = [n.name for n in chain]
        scope = ReadDecoderGraph.aggregate_scope
        out["aggregation"] = [n.name for n in model.graph.node if n.name.startswith(scope)]
        last = prod.get(T.LOGITS)
        if last is not None:
            names = _reachable([last], lambda n: [prod[i] for i in n.input if i in prod], stop)
            by_name = {n.name: n for n in model.graph.node}
            out["logits_conv"] = sorted(n for n in names if is_conv(by_name[n]))
    return {c: out[c] for c in CANDIDATES if out.get(c)}


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


# ------------------------------------------------------------------------------ errors vs fp32
def run_model(model: onnx.ModelProto | str | os.PathLike, feeds: list[Feed]) -> list[Feed]:
    """Every output of `model` for each feed (onnxruntime CPU, the INT8 session options)."""
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    session = ort.InferenceSession(src, ort_session_options(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, feed), strict=True)) for feed in feeds]


def output_error(graph: str, ref: list[Feed], got: list[Feed]) -> dict[str, Any]:
    """Error of a graph's outputs vs FP32 over all samples.

    Float outputs: rel_rmse = ||got - ref||_2 / ||ref||_2 (over every element of every sample),
    max_abs, max_ref. uint8 labels: mismatch = share of pixels whose label differs.
    score = the largest rel_rmse among SCORED_OUTPUTS[graph] (what the keep choices compare).
    """
    outputs: dict[str, dict[str, float]] = {}
    for name in ref[0]:
        if ref[0][name].dtype == np.uint8:
            diff = sum(int((r[name] != g[name]).sum()) for r, g in zip(ref, got))
            total = sum(r[name].size for r in ref)
            outputs[name] = {"mismatch": diff / max(total, 1)}
            continue
        err2 = ref2 = 0.0
        max_abs = max_ref = 0.0
        for r, g in zip(ref, got):
            a, b = r[name].astype(np.float64), g[name].astype(np.float64)
            if not np.isfinite(b).all():
                err2, max_abs = float("inf"), float("inf")
                break
            err2 += float(((a - b) ** 2).sum())
            ref2 += float((a**2).sum())
            max_abs = max(max_abs, float(np.abs(a - b).max()) if a.size else 0.0)
            max_ref = max(max_ref, float(np.abs(a).max()) if a.size else 0.0)
        outputs[name] = {
            "rel_rmse": float(np.sqrt(err2 / max(ref2, 1e-30))),
            "max_abs": max_abs,
            "max_ref": max_ref,
        }
    score = max(outputs[n]["rel_rmse"] for n in SCORED_OUTPUTS[graph] if n in outputs)
    return {"score": score, "outputs": outputs}
