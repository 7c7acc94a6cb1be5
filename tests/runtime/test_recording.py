"""RecordingRunner, the one Runner proxy: stage timing (profiling) and graph-input recording
(export's FP16/validation data, INT8 calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from mlvos.runtime.backends.recording import RecordingRunner
from mlvos.runtime.spec import Graph
from mlvos.runtime.spec import Tensor as T


class _TickTimer:
    """A 'device' timer whose clock advances 1 ms per mark (deterministic)."""

    kind = "device"

    def __init__(self):
        self.t = 0

    def mark(self):
        self.t += 1
        return self.t

    def elapsed_ms(self, start, end):
        return float(end - start)


class _FakeRunner:
    name, stride, capacity = "fake", 32, 4

    def upload(self, a):
        return a

    def encode_query(self, f):
        return f

    def read_decode(self, q, n):
        return q, q

    def write_slot(self, *a):
        pass

    def download(self, v):
        return v


def test_calls_are_attributed_to_stages():
    timed = RecordingRunner(_FakeRunner(), timer=_TickTimer())
    assert timed.capacity == 4 and timed.stride == 32  # attributes pass through
    timed.upload(1)
    timed.encode_query(1)
    timed.read_decode(1, 1)
    timed.write_slot(0, 1, 1, 1)
    timed.download(1)
    per = timed.collect()
    assert per["preprocess"] == per["query_encoder"] == per["read_decoder"] == 1.0
    assert per["memory_encoder"] == per["postprocess"] == 1.0
    assert per["total"] == 5.0
    assert timed.collect()["total"] == 0.0  # spans are consumed


def test_records_graph_inputs_only_while_recording():
    torch = pytest.importorskip("torch")
    from mlvos.data.synth import synth_sequence
    from mlvos.model.registry import build_model
    from mlvos.runtime.backends.torch_backend import TorchRunner
    from mlvos.runtime.predictor import VideoPredictor

    video = list(synth_sequence(3, 4, 64, 96, num_objects=2))
    runner = RecordingRunner(TorchRunner(build_model("tiny", seed=0).eval(), capacity=3))
    with runner:
        pred = VideoPredictor(runner, mem_every=2, prev_every=1)  # all graphs every frame
        pred.add_mask(0, video[0][1])
        pred.step(video[0][0])  # not recorded
        runner.recording = True
        labels = [pred.step(f) for f, _ in video[1:3]]
        runner.recording = False
        pred.step(video[3][0])
    assert [len(runner.feeds[g]) for g in Graph.ALL] == [2, 2, 2]
    read = runner.feeds[Graph.READ_DECODER]
    # frame 1 reads the annotated slot only, frame 2 that and frame 1's
    assert read[0][T.BANK_VALID].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert read[1][T.BANK_VALID].tolist() == [[1, 1, 0], [1, 1, 0]]
    # tiny's key bank is object-free (one row), its value bank per object
    assert read[0][T.BANK_KEY].shape[:2] == (1, 3) and read[0][T.BANK_KEY].dtype == np.float32
    assert read[0][T.BANK_VALUE].shape[:2] == (2, 3)
    assert runner.feeds[Graph.QUERY_ENCODER][0][T.FRAME].shape == (1, 3, 64, 96)
    memory = runner.feeds[Graph.MEMORY_ENCODER][0]
    assert memory[T.PROBS].shape == (2, 64, 96) and memory[T.PROBS].dtype == np.float32
    assert all(lab.shape == (64, 96) for lab in labels)
    assert torch.is_grad_enabled()  # the proxy's context manager restored the runner's state
