"""The ONNX ops TensorRT 10.3's ONNX parser supports, and a check of a graph against them.

TensorRT 10.3 is the floor because JetPack 6.1/6.2 (Jetson Orin) ships it (see
shared/reference/tensorrt_facts.md §1.3).

Source of SUPPORTED_OPS (data, not derived at run time):
  onnx/onnx-tensorrt docs/operators.md of the 10.15 GA release ("TensorRT 10.15 supports operators
  in the inclusive range of opset 9 to opset 24"), every row marked "Y", MINUS the ops that
  onnx/onnx-tensorrt docs/Changelog.md lists as added after 10.3:
    10.4  BlackmanWindow, HammingWindow, HannWindow
    10.5  STFT
    10.14 Attention
    10.15 RotaryEmbedding, RMSNormalization, TensorScatter
  (10.3 itself only changed Slice's `axes` input and the ScatterElements plugin; DeformConv came
  in 10.1.) The 10.x parser accepts opsets 9..20 (operators.md of 10.0: "opset 9 to opset 20").
  Per-op restrictions from the same table that can affect this model are checked too (Resize
  modes, Reduce* axes as initializers, MaxPool's Indices output).
"""

from __future__ import annotations

from mlvos.export.errors import UnsupportedOpError

TENSORRT_VERSION = "10.3"
# The largest K of TensorRT's TopK layer (TensorRT operator docs: "k <= 3840"). The memory read's
# top-k prior (ModelConfig.read_topk) feeds TopK a K = Min(read_topk, T*h*w) computed from the
# input shape, which the 10.x parser takes as a shape tensor.
TOPK_MAX_K = 3840
OPSET_RANGE: tuple[int, int] = (9, 20)
SOURCE = (
    "onnx/onnx-tensorrt docs/operators.md (10.15 GA) minus ops added in 10.4-10.15 per "
    "docs/Changelog.md"
)

SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
    MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
    OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
    SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    Unsqueeze Upsample Where Xor
    """.split()
)

_RESIZE_COORD_MODES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
_RESIZE_MODES = {"nearest", "linear"}


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def find_unsupported(model) -> list[str]:
    """Every reason the ONNX parser of TensorRT 10.3 would reject `model`, one line each.

    Args:
        model: onnx.ModelProto.

    Returns:
        Lines like "node '/x/Foo' (op Foo): op not supported by TensorRT 10.3"; empty if none.
    """
    problems: list[str] = []
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= imp.version <= OPSET_RANGE[1]:
            problems.append(
                f"opset {imp.version} is outside TensorRT {TENSORRT_VERSION}'s range "
                f"{OPSET_RANGE[0]}..{OPSET_RANGE[1]}"
            )
    for node in model.graph.node:
        where = f"node {node.name!r} (op {node.domain + '::' if node.domain else ''}{node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
        elif node.op_type not in SUPPORTED_OPS:
            problems.append(f"{where}: op not supported by TensorRT {TENSORRT_VERSION}")
        elif node.op_type == "Resize":
            coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
            mode = _attr(node, "mode", "nearest")
            if coord not in _RESIZE_COORD_MODES or mode not in _RESIZE_MODES:
                problems.append(f"{where}: Resize mode={mode!r} coordinate mode={coord!r}")
        elif node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in constants:
                problems.append(f"{where}: `axes` must be an initializer")
        elif node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            problems.append(f"{where}: the Indices output is unsupported")
    return problems


def check_tensorrt_ops(model, graph: str) -> None:
    """Raise UnsupportedOpError naming every unsupported op/node of `model` (graph `graph`)."""
    problems = find_unsupported(model)
    if problems:
        raise UnsupportedOpError(
            f"graph {graph!r} cannot be parsed by TensorRT {TENSORRT_VERSION} "
            f"({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
            + "\nRewrite the PyTorch code of these nodes in the export wrapper (mlvos.export."
            "wrappers) with supported ops, or lower --opset."
        )
