"""Is the memory read one fused attention layer in a TensorRT engine? Verified from the engine's
layer list rather than assumed from the ONNX pattern (the manifest's `attention_fusable`).

The memory read is the ONNX chain MatMul(Q.K) -> Add(empty-slot bias) -> Softmax -> MatMul(.V)
(mlvos.export.onnx_utils.find_attention). TensorRT names each engine layer after the ONNX nodes it
implements: a plain layer by its node ("/read/Softmax"), pointwise fusions by their nodes joined
with " + ", and a Myelin region (where TensorRT 10+ fuses attention) as
"{ForeignNode[FIRST...LAST]}", FIRST and LAST being the region's first and last nodes in graph
order. `classify_attention` maps the chain's MatMul, Softmax and MatMul to the layers that cover
them: all three in one layer is "fused", in different layers "unfused", and a node that no layer
name covers (a renamed region) "unknown".

Engines built with the default ProfilingVerbosity (LAYER_NAMES_ONLY, as mlvos builds them) list
names only; that is all this needs. Whether a fused region runs a flash-attention kernel is a
tactic choice the names do not show (`polygraphy inspect model ENGINE --show layers` prints
the same names; an engine built with ProfilingVerbosity.DETAILED also shows tactics).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FUSED, UNFUSED, UNKNOWN = "fused", "unfused", "unknown"

_REGION = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")
_SPLIT = re.compile(r"\s\+\s|[{}\[\]]|\.\.\.")


def layer_nodes(layer: str, order: dict[str, int]) -> set[str]:
    """ONNX node names (keys of `order`, node name -> index in graph order) that the engine layer
    named `layer` implements: its " + "-joined names, and every node from FIRST to LAST of each
    ForeignNode[FIRST...LAST] region."""
    covered = {t.strip() for t in _SPLIT.split(layer) if t.strip() in order}
    for first, last in _REGION.findall(layer):
        lo, hi = order.get(first.strip()), order.get(last.strip())
        if lo is not None and hi is not None:
            covered |= {n for n, i in order.items() if lo <= i <= hi}
    return covered


def classify_attention(
    layers: Sequence[str], chain: Sequence[str], node_order: Sequence[str]
) -> dict[str, Any]:
    """Where the attention chain's nodes ended up among an engine's layers.

    Args:
        layers: the engine's layer names, in engine order.
        chain: ONNX node names of the chain's first MatMul, Softmax and second MatMul.
        node_order: every ONNX node name of the graph the engine was built from, in graph order.

    Returns:
        {"status": "fused" | "unfused" | "unknown", "layers": {node: [layer names]},
        "detail": one sentence}.
    """
    order = {n: i for i, n in enumerate(node_order)}
    where: dict[str, list[str]] = {n: [] for n in chain}
    for layer in layers:
        covered = layer_nodes(layer, order)
        for node in chain:
            if node in covered:
                where[node].append(layer)
    missing = [n for n, found in where.items() if not found]
    if missing:
        return {
            "status": UNKNOWN,
            "layers": where,
            "detail": f"no layer name covers {missing}: the names do not tell where they went",
        }
    distinct = {layer for found in where.values() for layer in found}
    if len(distinct) == 1:
        return {
            "status": FUSED,
            "layers": where,
            "detail": f"MatMul, Softmax and MatMul run in one layer: {distinct.pop()}",
        }
    return {
        "status": UNFUSED,
        "layers": where,
        "detail": f"the chain is split over {len(distinct)} layers: "
        + "; ".join(f"{n} -> {', '.join(found)}" for n, found in where.items()),
    }


def attention_chain(onnx_path: str | Path) -> tuple[list[str], list[str]] | None:
    """(chain node names [MatMul, Softmax, MatMul], every node name in graph order) of an ONNX
    graph, or None when it has no plain attention chain (a read with priors, an FP32 island
    around the read)."""
    import onnx

    from mlvos.export.onnx_utils import find_attention

    model = onnx.load(str(onnx_path), load_external_data=False)
    found = find_attention(model)
    if found is None:
        return None
    mm1, _add, softmax, mm2 = found
    return [mm1.name, softmax.name, mm2.name], [n.name for n in model.graph.node]


def engine_layer_names(trt: Any, engine_path: str | Path) -> list[str]:
    """Layer names of a serialized engine, through TensorRT's EngineInspector (call only after a
    CUDA device was confirmed: TensorRT's Runtime crashes without one).

    Args:
        trt: the imported tensorrt module.
        engine_path: the engine file.
    """
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    # LAYER_NAMES_ONLY lists strings; DETAILED lists dicts with a "Name".
    return [
        layer["Name"] if isinstance(layer, dict) else str(layer) for layer in info.get("Layers", [])
    ]
