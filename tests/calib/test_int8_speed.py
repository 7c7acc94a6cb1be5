"""INT8 that pays on onnxruntime CPU (method "ort-cpu"): the structure that makes it fast, not a
timing (the timings are benchmarks, README).

onnxruntime computes in INT8 only where its optimizer fuses DQ -> Conv -> Q into a QLinearConv;
a convolution left as DequantizeLinear -> FP32 Conv is slower than plain FP32 (calib/ort_cpu.py
explains the placement). These tests quantize the tiny graphs with "ort-cpu", let onnxruntime
optimize them under the session options the graphs need, and check that every quantized
convolution became a QLinearConv, that the graphs are still symmetric INT8 Q/DQ within
TensorRT's op list, and that the memory read and the soft aggregation stayed FP32.
"""

from __future__ import annotations

import onnx
import pytest

from mlvos.calib.quantize import (
    candidate_nodes,
    cpu_int8_nodes,
    ort_cpu_kernels,
    qdq_summary,
    quantize_model,
    quantized_nodes,
)
from mlvos.calib.record import open_dataset, record
from mlvos.export.onnx_utils import producers_consumers
from mlvos.export.trt_ops import find_unsupported
from mlvos.export.wrappers import ReadDecoderGraph
from mlvos.runtime.manifest import graph_file
from mlvos.runtime.spec import Graph


@pytest.fixture(scope="module")
def feeds(tiny_export, calib_data):
    ds, names = open_dataset(calib_data, "val", None, "--data")
    positions = [(names[0], 1), (names[0], 3), (names[1], 2), (names[1], 4)]
    return record(tiny_export, ds, positions, mem_every=2).feeds


@pytest.fixture(scope="module")
def quantized(tiny_export, feeds):
    """graph -> (fp32 model, ort-cpu int8 model)."""
    out = {}
    for graph in Graph.ALL:
        path = tiny_export / graph_file(graph, "fp32")
        model = quantize_model(path, feeds[graph], method="ort-cpu", calibrator="max")
        out[graph] = (onnx.load(path), model)
    return out


@pytest.mark.parametrize("graph", Graph.ALL)
def test_every_quantized_conv_runs_as_qlinearconv(quantized, graph):
    fp32, model = quantized[graph]
    by_name = {n.name: n for n in fp32.graph.node}
    convs = [n for n in cpu_int8_nodes(fp32) if by_name[n].op_type == "Conv"]
    kernels = ort_cpu_kernels(model)
    assert convs and kernels["int8_conv"] == len(convs), kernels
    assert kernels["fp32_conv_after_dq"] == 0, kernels


@pytest.mark.parametrize("graph", Graph.ALL)
def test_symmetric_int8_tensorrt_ops_one_pair_per_consumer(quantized, graph):
    _, model = quantized[graph]
    summary = qdq_summary(model)
    assert summary["quantize_linear"] > 0 and summary["nonzero_zero_points"] == []
    assert find_unsupported(model) == []
    # onnxruntime turns a symmetric int8 pair into its uint8 kernels' input only when the Q feeds
    # exactly one DQ: every activation Q -> one DQ -> one node.
    weights = {i.name for i in model.graph.initializer}
    _, cons = producers_consumers(model)
    for q in model.graph.node:
        if q.op_type == "QuantizeLinear" and q.input[0] not in weights:
            (dq,) = cons[q.output[0]]
            assert dq.op_type == "DequantizeLinear" and len(cons[dq.output[0]]) <= 1, q.name


def test_first_convolutions_memory_read_and_aggregation_stay_fp32(quantized):
    for graph in (Graph.QUERY_ENCODER, Graph.MEMORY_ENCODER):
        fp32, model = quantized[graph]
        first = candidate_nodes(fp32, graph)["first_conv"]
        assert first and set(first).isdisjoint(quantized_nodes(model))
    fp32, model = quantized[Graph.READ_DECODER]
    int8 = set(quantized_nodes(model))
    read = [n.name for n in fp32.graph.node if n.op_type in ("MatMul", "Softmax")]
    scope = ReadDecoderGraph.aggregate_scope
    aggregation = [n.name for n in fp32.graph.node if n.name.startswith(scope)]
    assert read and aggregation
    assert int8.isdisjoint(read) and int8.isdisjoint(aggregation)
    # Only quantized Relus became LeakyRelu(alpha=0); the FP32 parts keep the FP32 operators.
    leaky = {n.name for n in model.graph.node if n.op_type == "LeakyRelu"}
    assert leaky and leaky <= int8
