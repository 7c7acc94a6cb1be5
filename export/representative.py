"""Representative graph inputs: recorded from a real propagation, and random ones.

`record_propagation` runs the PyTorch reference propagation (mlvos.model.inference.propagate) over
a short synthetic video and records, for each graph, the exact inputs the graph would see in
deployment (the bank padded to the fixed capacity with zero slots and validity 0) together with
the PyTorch outputs for them. These feeds drive the FP16 conversion (AutoCast's calibration
data) and the "real" half of the validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mlvos.export.wrappers import build_wrapper
from mlvos.model.network import STMNet
from mlvos.runtime.spec import FEATURE_STRIDE, Graph
from mlvos.runtime.spec import Tensor as T

Feed = dict[str, np.ndarray]


@dataclass
class Samples:
    """Per graph: list of (inputs, PyTorch outputs), numpy, in the fp32 export's dtypes."""

    cases: dict[str, list[tuple[Feed, Feed]]] = field(default_factory=dict)

    def add(self, graph: str, feed: Feed, ref: Feed) -> None:
        self.cases.setdefault(graph, []).append((feed, ref))

    def feeds(self, graph: str) -> list[Feed]:
        return [f for f, _ in self.cases.get(graph, [])]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _run(wrapper: torch.nn.Module, feed: Feed) -> Feed:
    with torch.no_grad():
        outs = wrapper(*(torch.from_numpy(feed[n]) for n in wrapper.input_names))
    return {n: _np(o) for n, o in zip(wrapper.output_names, outs, strict=True)}


class _Recorder:
    """Stands in for an STMNet inside `propagate`: records every stage call's graph inputs and
    outputs, and answers them with the export wrappers (the read with a capacity-padded bank)."""

    def __init__(self, model: STMNet, capacity: int, samples: Samples):
        self.stride = model.stride
        self.capacity = capacity
        self.samples = samples
        self.query = build_wrapper(Graph.QUERY_ENCODER, model)
        self.memory = build_wrapper(Graph.MEMORY_ENCODER, model)
        self.read = build_wrapper(Graph.READ_DECODER, model)

    def _call(self, graph: str, wrapper, feed: Feed) -> Feed:
        ref = _run(wrapper, feed)
        self.samples.add(graph, feed, ref)
        return ref

    def encode_query(self, frame: torch.Tensor):
        from mlvos.model.encoders import QueryFeatures

        ref = self._call(Graph.QUERY_ENCODER, self.query, {T.FRAME: _np(frame)})
        return QueryFeatures(*(torch.from_numpy(ref[n]) for n in self.query.output_names))

    def encode_memory(self, frame: torch.Tensor, probs: torch.Tensor, query_key=None):
        feed = {T.FRAME: _np(frame), T.PROBS: _np(probs.float())}
        if T.QUERY_KEY in self.memory.input_names:
            # The runtime feeds the key of the frame's own query; the annotated frame 0 is
            # encoded as a query for it (as the predictor does).
            if query_key is None:
                query_key = self.encode_query(frame).key
            feed[T.QUERY_KEY] = _np(query_key)
        ref = self._call(Graph.MEMORY_ENCODER, self.memory, feed)
        return torch.from_numpy(ref[T.MEM_KEY]), torch.from_numpy(ref[T.MEM_VALUE])

    def read_decode(self, query, bank_key, bank_value, bank_valid):
        o, t = bank_key.shape[:2]
        pad = self.capacity - t

        def padded(x: torch.Tensor) -> np.ndarray:
            z = torch.zeros((o, pad, *x.shape[2:]), dtype=x.dtype)
            return _np(torch.cat([x, z], dim=1))

        feed = {
            T.QUERY_KEY: _np(query.key),
            T.QUERY_VALUE: _np(query.value),
            T.SKIP8: _np(query.skip8),
            T.SKIP4: _np(query.skip4),
            T.BANK_KEY: padded(bank_key),
            T.BANK_VALUE: padded(bank_value),
            T.BANK_VALID: padded(bank_valid.float()),
        }
        return torch.from_numpy(self._call(Graph.READ_DECODER, self.read, feed)[T.LOGITS])


def record_propagation(
    model: STMNet,
    *,
    height: int,
    width: int,
    capacity: int,
    frames: int = 4,
    objects: int = 2,
    mem_every: int = 2,
    seed: int = 0,
) -> Samples:
    """Propagate a synthetic video (data.synth) and record every graph's real inputs/outputs.

    Args:
        height, width: frame size, multiples of model.stride (no padding needed).
        capacity: bank slots of the read_decoder graph; the bank is zero-padded to it.
        frames: video length (frame 0 annotated); frames - 1 query/read calls, `frames` memory.
        mem_every: permanent-memory period, small so that short videos fill several slots.
    """
    from mlvos.data.synth import synth_sequence
    from mlvos.model.inference import propagate

    video = list(synth_sequence(seed, frames, height, width, num_objects=objects))
    samples = Samples()
    recorder = _Recorder(model, capacity, samples)
    for _ in propagate(
        [recorder], (f for f, _ in video), video[0][1], capacity=capacity, mem_every=mem_every
    ):
        pass
    return samples


def random_samples(
    model: STMNet,
    *,
    height: int,
    width: int,
    capacity: int,
    objects: int = 2,
    seed: int = 0,
) -> Samples:
    """One random input set per graph with its PyTorch outputs.

    Pixels uniform in 0..255, probabilities uniform in [0, 1], features N(0, 1); object k's bank
    has its first 1 + k % capacity slots valid and the rest zero, as the runtime fills it.
    """
    rng = np.random.default_rng(seed)
    cfg = model.config
    c4, c8, _ = cfg.query_backbone.feature_channels()
    h, w = height // FEATURE_STRIDE, width // FEATURE_STRIDE
    frame = rng.integers(0, 256, size=(1, 3, height, width), dtype=np.uint8)
    valid = np.zeros((objects, capacity), dtype=np.float32)
    for k in range(objects):
        valid[k, : 1 + k % capacity] = 1.0
    mask = valid[:, :, None, None, None]

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    feeds = {
        Graph.QUERY_ENCODER: {T.FRAME: frame},
        Graph.MEMORY_ENCODER: {
            T.FRAME: frame,
            T.PROBS: rng.random((objects, height, width), dtype=np.float32),
            **({T.QUERY_KEY: normal(1, cfg.key_dim, h, w)} if cfg.shared_key else {}),
        },
        Graph.READ_DECODER: {
            T.QUERY_KEY: normal(1, cfg.key_dim, h, w),
            T.QUERY_VALUE: normal(1, cfg.value_dim, h, w),
            T.SKIP8: normal(1, c8, 2 * h, 2 * w),
            T.SKIP4: normal(1, c4, 4 * h, 4 * w),
            T.BANK_KEY: normal(objects, capacity, cfg.key_dim, h, w) * mask,
            T.BANK_VALUE: normal(objects, capacity, cfg.value_dim, h, w) * mask,
            T.BANK_VALID: valid,
        },
    }
    samples = Samples()
    for graph, feed in feeds.items():
        samples.add(graph, feed, _run(build_wrapper(graph, model), feed))
    return samples
