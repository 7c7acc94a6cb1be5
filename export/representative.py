"""Representative graph inputs: recorded from a real propagation, and random ones.

`record_propagation` runs the runtime's frame loop (VideoPredictor) on the PyTorch model
(TorchRunner) over a short synthetic video and records, through the RecordingRunner proxy, the
exact inputs each graph sees in deployment (the bank at its fixed capacity, empty slots zero with
validity 0), together with the export wrappers' PyTorch outputs for them. These feeds drive the
FP16 conversion (AutoCast's calibration data) and the "real" half of the validation.
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
    from mlvos.runtime.backends.recording import RecordingRunner
    from mlvos.runtime.backends.torch_backend import TorchRunner
    from mlvos.runtime.predictor import propagate

    video = list(synth_sequence(seed, frames, height, width, num_objects=objects))
    runner = RecordingRunner(TorchRunner(model, capacity=capacity))
    runner.recording = True
    with runner:
        # prev_every=1: the memory encoder sees every frame (STM's schedule), whatever the
        # model's default, so short videos give it as many samples as the other graphs
        for _ in propagate(runner, (f for f, _ in video), video[0][1], mem_every=mem_every,
                           prev_every=1):
            pass
    samples = Samples()
    for graph, feeds in runner.feeds.items():
        wrapper = build_wrapper(graph, model)
        for feed in feeds:
            samples.add(graph, feed, _run(wrapper, feed))
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
            # object-free for shared keys: filled where any object's slot is
            T.BANK_KEY: (normal(1, capacity, cfg.key_dim, h, w) * mask.max(0, keepdims=True)
                         if cfg.shared_key else normal(objects, capacity, cfg.key_dim, h, w)
                         * mask),
            T.BANK_VALUE: normal(objects, capacity, cfg.value_dim, h, w) * mask,
            T.BANK_VALID: valid,
        },
    }
    samples = Samples()
    for graph, feed in feeds.items():
        samples.add(graph, feed, _run(build_wrapper(graph, model), feed))
    return samples
