"""Graph I/O contracts: names (runtime.spec.Tensor), dtypes per precision, symbolic shapes.

Symbolic dims are strings: "O" (objects), "H", "W" (padded frame size, multiples of the stride)
and "H/4", "W/8", ... for feature maps; fixed dims are ints. With a static export size, "H" and
"W" (and their fractions) become ints; "O" always stays dynamic and T (capacity) always static.
"""

from __future__ import annotations

from mlvos.runtime.spec import Dim, Graph, Precision, TensorSpec
from mlvos.runtime.spec import Tensor as T


def _frac(dim: Dim, div: int) -> Dim:
    return dim // div if isinstance(dim, int) else f"{dim}/{div}"


def graph_io(
    graph: str,
    precision: str,
    *,
    key_dim: int,
    value_dim: int,
    skip8_dim: int,
    skip4_dim: int,
    capacity: int,
    size: tuple[int, int] | None,
    shared_key: bool = False,
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of `graph` at `precision` ("fp32"/"fp16").

    Args:
        size: static padded (H, W), or None for dynamic H and W.
        shared_key: the model's memory keys are its query keys (ModelConfig.shared_key): the
            memory_encoder takes the frame's query_key as a third input and returns it as
            mem_key (1, Ck, h, w); bank_key is object-free, (1, T, Ck, h, w).
    """
    h, w = size if size is not None else ("H", "W")
    o = "O"
    # A shared-key model's bank stores each frame's key once for all objects (object-free key
    # bank: one affinity per frame in read_decoder); STM's keys depend on the object.
    key_rows: Dim = 1 if shared_key else o
    f16 = (_frac(h, 16), _frac(w, 16))

    def spec(name: str, dtype: str, *shape: Dim) -> TensorSpec:
        return TensorSpec(name, Precision.io_dtype(precision, name, dtype), tuple(shape))

    frame = spec(T.FRAME, "uint8", 1, 3, h, w)
    query = [
        spec(T.QUERY_KEY, "float32", 1, key_dim, *f16),
        spec(T.QUERY_VALUE, "float32", 1, value_dim, *f16),
        spec(T.SKIP8, "float32", 1, skip8_dim, _frac(h, 8), _frac(w, 8)),
        spec(T.SKIP4, "float32", 1, skip4_dim, _frac(h, 4), _frac(w, 4)),
    ]
    if graph == Graph.QUERY_ENCODER:
        return [frame], query
    if graph == Graph.MEMORY_ENCODER:
        key_in = [query[0]] if shared_key else []
        return [frame, spec(T.PROBS, "float32", o, h, w), *key_in], [
            spec(T.MEM_KEY, "float32", key_rows, key_dim, *f16),
            spec(T.MEM_VALUE, "float32", o, value_dim, *f16),
        ]
    if graph == Graph.READ_DECODER:
        bank = [
            spec(T.BANK_KEY, "float32", key_rows, capacity, key_dim, *f16),
            spec(T.BANK_VALUE, "float32", o, capacity, value_dim, *f16),
            spec(T.BANK_VALID, "float32", o, capacity),
        ]
        return query + bank, [
            spec(T.LOGITS, "float32", o, h, w),
            spec(T.OBJ_PROBS, "float32", o, h, w),
            spec(T.LABELS, "uint8", h, w),
        ]
    raise KeyError(f"unknown graph {graph!r}; known: {Graph.ALL}")
