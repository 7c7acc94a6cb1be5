"""Parameter and multiply-accumulate (MAC) counts per stage, computed on the meta device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mlvos.model.registry import build_model
from mlvos.runtime.spec import FEATURE_STRIDE, padded_size


@dataclass(frozen=True)
class StageCost:
    variant: str
    params_m: float
    stride: int
    height: int
    width: int
    query_gmac: float
    memory_gmac: float  # per object
    read_decode_gmac: float  # per object, full bank (what each further object adds)
    capacity: int
    # once per frame whatever the object count: the affinity of an object-free key bank and the
    # decoder's convolutions of the query features (skips, query value)
    read_shared_gmac: float = 0.0
    # once per memorized frame whatever the object count: the frame's features of a late-fusion
    # memory encoder (ModelConfig.memory_fusion "late"); 0 for STM's stem fusion
    memory_shared_gmac: float = 0.0

    def memory_write_gmac(self, objects: int) -> float:
        """GMACs of memory_encoder for `objects` objects."""
        return self.memory_shared_gmac + objects * self.memory_gmac

    def read_gmac(self, objects: int) -> float:
        """GMACs of read_decoder for `objects` objects over the full bank."""
        return self.read_shared_gmac + objects * self.read_decode_gmac

    def per_frame(self, objects: int) -> float:
        """GMACs of one propagated frame: 1 query + the memory write and the read of O objects."""
        return self.query_gmac + self.memory_write_gmac(objects) + self.read_gmac(objects)


def _gmacs(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2e9


def stage_costs(variant: str, height: int = 480, width: int = 864, capacity: int = 6) -> StageCost:
    """Count parameters and GMACs of each stage at (height, width) padded to the stride."""
    with torch.device("meta"):
        model = build_model(variant).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    h, w = padded_size(height, width, model.stride)
    ck, cv = model.config.key_dim, model.config.value_dim
    with torch.device("meta"), torch.no_grad():
        frame = torch.empty(1, 3, h, w)
        q = model.encode_query(frame)
        query = _gmacs(lambda: model.encode_query(frame))
        # a shared-key model's memory stage takes the query key instead of recomputing it
        def write(objects: int) -> float:
            return _gmacs(lambda: model.encode_memory(frame, torch.empty(objects, h, w), q.key))

        mem_one, mem_two = write(1), write(2)
        hf, wf = h // FEATURE_STRIDE, w // FEATURE_STRIDE

        def read(objects: int) -> float:
            bk = torch.empty(1 if model.config.shared_key else objects, capacity, ck, hf, wf)
            bv = torch.empty(objects, capacity, cv, hf, wf)
            valid = torch.ones(objects, capacity)
            return _gmacs(lambda: model.read_decode(q, bk, bv, valid))

        one, two = read(1), read(2)
    return StageCost(variant, params, model.stride, h, w, query, mem_two - mem_one, two - one,
                     capacity, read_shared_gmac=2 * one - two,
                     memory_shared_gmac=2 * mem_one - mem_two)
