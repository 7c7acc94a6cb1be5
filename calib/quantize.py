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
    convolutional network in INT8 kernels instead of FP32 kernels between Q/DQ pairs (the
    placement, and why onnxruntime CPU needs it: ort_cpu.py).
All take the recorded feeds through one CalibrationDataReader (samples differ in object count
and frame size, so they cannot be stacked into one array as ModelOpt's npz path requires).

One ModelOpt step is bypassed (_fast_modelopt): before quantizing, it re-derives every graph
output's shape with onnxruntime's symbolic shape inference to repair stale shapes of weakly typed
models. On these graphs (dynamic H/W through Resize) sympy spends 20 s of a 23 s quantization of
the tiny query encoder on it (measured), minutes for the paper variant, and the result is
discarded: the export wrote exact output shapes (export.onnx_utils.set_io), restored below too.

Candidates kept in FP32 (constants.CANDIDATES; nodes found by candidate_nodes):
  first_conv   the convolutions reading the network input (normalized pixels, probabilities);
  attention    the memory read: MatMul -> Add(empty-slot bias) -> Softmax -> MatMul; with a
               read prior (top-k, kernel), which has no such chain, the read's MatMuls;
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
from mlvos.calib.ort_cpu import (
    cpu_int8_nodes,
    dedicate_qdq_pairs,
    ort_session_options,
    reachable,
    relu_as_leaky,
)

# Re-exported: calib.api and the tests import it from here.
from mlvos.calib.ort_cpu import ort_cpu_kernels as ort_cpu_kernels
from mlvos.errors import require
from mlvos.export.onnx_utils import find_attention, io_specs, producers_consumers, set_io
from mlvos.export.wrappers import ReadDecoderGraph
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
                relu_as_leaky(source, set(chosen))
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
        dedicate_qdq_pairs(model)
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
        names = reachable(first, lambda n: [c for o in n.output for c in cons.get(o, [])], stop)
        by_name = {n.name: n for n in model.graph.node}
        out["first_conv"] = sorted(n for n in names if is_conv(by_name[n]))
    if graph == Graph.READ_DECODER:
        chain = find_attention(model)
        if chain is not None:
            out["attention"] = [n.name for n in chain]
        else:
            # a read with a prior has no fusable chain; its matrix products are still the memory
            # read (the decoder has none), and the kernel read's carry its bias and |q|^2 as one
            # extra column each, whose range an 8-bit per-tensor scale cannot share with the keys
            products = [n.name for n in model.graph.node if n.op_type == "MatMul"]
            if products:
                out["attention"] = products
        scope = ReadDecoderGraph.aggregate_scope
        out["aggregation"] = [n.name for n in model.graph.node if n.name.startswith(scope)]
        last = prod.get(T.LOGITS)
        if last is not None:
            names = reachable([last], lambda n: [prod[i] for i in n.input if i in prod], stop)
            by_name = {n.name: n for n in model.graph.node}
            out["logits_conv"] = sorted(n for n in names if is_conv(by_name[n]))
    return {c: out[c] for c in CANDIDATES if out.get(c)}


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
