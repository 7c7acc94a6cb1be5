"""PyTorch -> ONNX for one graph: export, simplify, set the I/O contract, check.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. With torch 2.13 the
dynamo exporter (the default) was measured on these graphs and rejected:
  - it has no opset-17 implementations: it exports opset 18 and down-converts with the ONNX C API,
    which produced an invalid ReduceProd (`noop_with_empty_axes` does not exist in opset 17) for
    the soft aggregation, so the read_decoder graph did not load;
  - it takes 12-16 s per graph for the tiny variant (TorchScript: < 1 s) and needs onnxscript;
  - dynamic H/W must be expressed as derived torch.export Dims (32 * _h), and data-dependent
    checks must be traced out anyway.
The TorchScript exporter gives exact opset 17 with named dynamic axes; onnxslim then removes its
shape-arithmetic clutter (266 -> 126 nodes for the read_decoder), leaving a graph of the same size
as the dynamo one.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch

from mlvos.export.errors import ExportError
from mlvos.export.onnx_utils import find_attention, set_io
from mlvos.export.trt_ops import check_tensorrt_ops
from mlvos.export.wrappers import ReadDecoderGraph
from mlvos.runtime.spec import Tensor as T
from mlvos.runtime.spec import TensorSpec, resolve_shape


def _dynamic_axes(specs: list[TensorSpec]) -> dict[str, dict[int, str]]:
    return {
        s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
        for s in specs
        if any(isinstance(d, str) for d in s.shape)
    }


def torch_to_onnx(
    wrapper: torch.nn.Module,
    sample: tuple[torch.Tensor, ...],
    *,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    opset: int,
) -> onnx.ModelProto:
    """Trace `wrapper` on `sample` and return the raw ONNX model (dims named from the specs)."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy-exporter DeprecationWarning and TracerWarnings about shape checks that
        # network._checking() already skips while tracing.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            sample,
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            dynamic_axes=_dynamic_axes([*inputs, *outputs]),
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-code and shape-arithmetic cleanup with onnxslim."""
    import onnxslim

    try:
        return onnxslim.slim(model, model_check=False)
    except Exception as e:  # onnxslim raises plain Exceptions from its passes
        raise ExportError(f"onnxslim failed to simplify the graph: {type(e).__name__}: {e}") from e


def check_graph(model: onnx.ModelProto, graph: str, *, attention_required: bool) -> None:
    """ONNX checker (full_check: strict shape inference too), TensorRT op support, attention
    pattern. Raises ExportError / UnsupportedOpError."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"graph {graph!r} fails the ONNX checker: {e}") from e
    check_tensorrt_ops(model, graph)
    if attention_required and find_attention(model) is None:
        raise ExportError(
            f"graph {graph!r} lost the MatMul -> Add -> Softmax(last axis) -> MatMul attention "
            "pattern of the memory read (model/memory.py); TensorRT cannot fuse it. Keep the "
            "read written as softmax(Q K^T + bias) V"
        )


def trace_sample(inputs: list[TensorSpec], *, objects: int, height: int, width: int):
    """Small example inputs for tracing (values do not matter: the trace has dynamic axes)."""

    sample = []
    for s in inputs:
        shape = resolve_shape(s.shape, {"O": objects, "H": height, "W": width})
        dtype = torch.uint8 if s.dtype == "uint8" else torch.float32
        # bank_valid = 1: every slot filled (the read needs one valid slot per object).
        sample.append(
            torch.ones(shape, dtype=dtype)
            if s.name == T.BANK_VALID
            else torch.zeros(shape, dtype=dtype)
        )
    return tuple(sample)


def export_graph(
    wrapper: torch.nn.Module,
    *,
    graph: str,
    trace_io: tuple[list[TensorSpec], list[TensorSpec]],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    stride: int,
    opset: int,
) -> onnx.ModelProto:
    """Export one wrapper to a checked, simplified fp32 ONNX model.

    The trace always has dynamic O/H/W (`trace_io`, the contract with size=None) and runs on a
    small sample (2x3 strides, 2 objects): tracing runs the model once, which costs seconds at
    480x864 for the paper variant. A static contract (`inputs`/`outputs` with int H/W) is then
    written onto the graph and onnxslim folds the shape arithmetic for it.

    Args:
        wrapper: module from mlvos.export.wrappers, eval mode.
        trace_io: the dynamic (inputs, outputs) contract of the graph.
        inputs / outputs: the graph's final I/O contract (io_spec.graph_io).
        stride: the model's total stride (trace size = 2x3 strides).
    """
    sample = trace_sample(trace_io[0], objects=2, height=2 * stride, width=3 * stride)
    model = torch_to_onnx(wrapper, sample, inputs=trace_io[0], outputs=trace_io[1], opset=opset)
    set_io(model, inputs, outputs)
    del model.graph.value_info[:]  # internal dim names of the exporter; inference redoes them
    model = simplify(model)
    set_io(model, inputs, outputs)
    del model.graph.value_info[:]
    model.doc_string = ""
    # A read with a prior (ModelConfig.read_topk / read_kernel) has nodes between the MatMul and
    # the Softmax by design; without one, the plain fusable chain is required.
    plain_read = isinstance(wrapper, ReadDecoderGraph) and not wrapper.model.config.read_priors
    check_graph(model, graph, attention_required=plain_read)
    return model
