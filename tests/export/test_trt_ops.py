"""The TensorRT 10.3 op check names every unsupported op and node."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from mlvos.export.errors import UnsupportedOpError
from mlvos.export.trt_ops import SUPPORTED_OPS, check_tensorrt_ops, find_unsupported


def _model(nodes, opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_supported_graph_passes():
    check_tensorrt_ops(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")]), "g")


def test_unsupported_op_is_named_with_its_node():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("Hardmax", ["a"], ["b"], name="fine_too"),
        helper.make_node("Col2Im", ["b"], ["y"], name="/decoder/fold"),
    ]
    with pytest.raises(UnsupportedOpError, match=r"'/decoder/fold' \(op Col2Im\).*TensorRT 10.3"):
        check_tensorrt_ops(_model(nodes), "read_decoder")


def test_every_problem_is_listed():
    nodes = [
        helper.make_node("Unique", ["x"], ["a"], name="u"),
        helper.make_node("MyOp", ["a"], ["y"], name="plugin", domain="com.example"),
    ]
    problems = find_unsupported(_model(nodes, opset=21))
    assert len(problems) == 3
    assert any("opset 21" in p for p in problems)
    assert any("'u'" in p and "Unique" in p for p in problems)
    assert any("'plugin'" in p and "plugin" in p for p in problems)


def test_resize_mode_restriction():
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", mode="cubic")
    assert any("Resize mode='cubic'" in p for p in find_unsupported(_model([node])))


def test_op_list_excludes_ops_added_after_10_3():
    for op in ("Attention", "STFT", "HannWindow", "RMSNormalization", "RotaryEmbedding"):
        assert op not in SUPPORTED_OPS
    assert {"Conv", "MatMul", "Softmax", "Resize", "ArgMax", "ReduceProd"} <= SUPPORTED_OPS
