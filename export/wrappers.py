"""Export-only wrappers: one nn.Module per exported graph, reusing the trained STMNet stages.

Each wrapper's forward has exactly the graph's inputs and outputs (names in runtime.spec.Tensor)
as positional tensors: the ONNX exporter cannot take the NamedTuple QueryFeatures or the STMNet
methods directly. The stage methods skip their Python shape checks while tracing (network.py),
so nothing data-dependent ends up in the graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from mlvos.model.encoders import QueryFeatures
from mlvos.model.network import STMNet
from mlvos.runtime.spec import Graph
from mlvos.runtime.spec import Tensor as T


class QueryEncoderGraph(nn.Module):
    """frame (1, 3, H, W) uint8 -> query_key (1, Ck, H/16, W/16), query_value (1, Cv, H/16, W/16),
    skip8 (1, C8, H/8, W/8), skip4 (1, C4, H/4, W/4), all float32. ImageNet normalization is
    inside (model.encoders.Normalize)."""

    name = Graph.QUERY_ENCODER
    input_names = (T.FRAME,)
    output_names = (T.QUERY_KEY, T.QUERY_VALUE, T.SKIP8, T.SKIP4)

    def __init__(self, model: STMNet):
        super().__init__()
        self.model = model

    def forward(self, frame: torch.Tensor):
        q = self.model.encode_query(frame)
        return q.key, q.value, q.skip8, q.skip4


class MemoryEncoderGraph(nn.Module):
    """frame (1, 3, H, W) uint8 + probs (O, H, W) float32 in [0, 1] -> mem_key (O, Ck, h, w),
    mem_value (O, Cv, h, w) with h, w = H/16, W/16; objects on the batch axis.

    A shared-key model (config.shared_key) takes a third input, query_key (1, Ck, h, w): the
    query encoder's key of the same frame, which is its mem_key (1, Ck, h, w), stored once for
    all objects (an object-free key bank), so the graph does not run the query backbone again.
    """

    name = Graph.MEMORY_ENCODER
    output_names = (T.MEM_KEY, T.MEM_VALUE)

    def __init__(self, model: STMNet):
        super().__init__()
        self.model = model
        self.input_names = (T.FRAME, T.PROBS) + (
            (T.QUERY_KEY,) if model.config.shared_key else ()
        )

    def forward(self, frame: torch.Tensor, probs: torch.Tensor, query_key=None):
        return self.model.encode_memory(frame, probs, query_key)


class SoftAggregation(nn.Module):
    """STMNet.aggregate_outputs as a submodule, so its nodes carry the `/aggregate/` scope that
    the FP16 conversion keeps in FP32 (clamp(1e-7) and log: 1 - 1e-7 rounds to 1 in FP16)."""

    def forward(self, logits: torch.Tensor):
        return STMNet.aggregate_outputs(logits)


class ReadDecoderGraph(nn.Module):
    """Memory read over a fixed-capacity bank + decoder + soft aggregation.

    Inputs: query_key (1, Ck, h, w), query_value (1, Cv, h, w), skip8 (1, C8, 2h, 2w),
    skip4 (1, C4, 4h, 4w), bank_key (O, T, Ck, h, w) or, for a shared-key model, (1, T, Ck, h,
    w) (one affinity per frame for all objects), bank_value (O, T, Cv, h, w), bank_valid (O, T)
    float32 (1 = filled slot; empty slots get exactly zero softmax weight).
    Outputs: logits (O, H, W) float32, obj_probs (O, H, W) float32, labels (H, W) uint8 (argmax
    slot, 0 = background).
    """

    name = Graph.READ_DECODER
    input_names = (
        T.QUERY_KEY,
        T.QUERY_VALUE,
        T.SKIP8,
        T.SKIP4,
        T.BANK_KEY,
        T.BANK_VALUE,
        T.BANK_VALID,
    )
    output_names = (T.LOGITS, T.OBJ_PROBS, T.LABELS)
    # Scope of the soft-aggregation nodes in the ONNX graph (module attribute name below).
    aggregate_scope = "/aggregate/"

    def __init__(self, model: STMNet):
        super().__init__()
        self.model = model
        self.aggregate = SoftAggregation()

    def forward(self, query_key, query_value, skip8, skip4, bank_key, bank_value, bank_valid):
        query = QueryFeatures(query_key, query_value, skip8, skip4)
        logits = self.model.read_decode(query, bank_key, bank_value, bank_valid)
        obj_probs, labels = self.aggregate(logits)
        return logits, obj_probs, labels


WRAPPERS: dict[str, type[nn.Module]] = {
    Graph.QUERY_ENCODER: QueryEncoderGraph,
    Graph.MEMORY_ENCODER: MemoryEncoderGraph,
    Graph.READ_DECODER: ReadDecoderGraph,
}


def build_wrapper(graph: str, model: STMNet) -> nn.Module:
    """The wrapper of `graph` around `model`, in eval mode.

    eval() matters: the TorchScript exporter restores the wrapper's own training flag on the
    whole module tree after export, so a wrapper left in train mode would switch the model's
    BatchNorms to training (and update their running statistics on the next call).
    """
    return WRAPPERS[graph](model).eval()
