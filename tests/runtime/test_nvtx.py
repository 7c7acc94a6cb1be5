"""NVTX ranges around each graph call (Nsight Systems timelines), checked on the CPU: a fake `nvtx`
module in sys.modules records every push and pop; MLVOS_NVTX=1 turns the ranges on for the CPU
torch and onnxruntime runners, and the TensorRT runner (on the fake TensorRT / CUDA of
tests/runtime/fake_trt.py, a "CUDA" device) has them on by default."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from mlvos.errors import InputError
from mlvos.runtime.backends.base import NVTX_ENV, NvtxRanges, nvtx_ranges
from mlvos.runtime.spec import Graph

STAGES = {Graph.QUERY_ENCODER, Graph.MEMORY_ENCODER, Graph.READ_DECODER}


class FakeNvtx(types.ModuleType):
    """The two calls of the `nvtx` package the runners make; `events` holds ("push", message)
    and ("pop", message of the range it closed); `nested` the (outer, inner) pairs pushed."""

    def __init__(self):
        super().__init__("nvtx")
        self.events: list[tuple[str, str]] = []
        self.stack: list[str] = []
        self.nested: list[tuple[str, str]] = []

    def push_range(self, message):
        if self.stack:
            self.nested.append((self.stack[-1], message))
        self.stack.append(message)
        self.events.append(("push", message))

    def pop_range(self):
        assert self.stack, "pop_range without a matching push_range"
        self.events.append(("pop", self.stack.pop()))


@pytest.fixture()
def fake_nvtx(monkeypatch):
    module = FakeNvtx()
    monkeypatch.setitem(sys.modules, "nvtx", module)
    return module


def _outer_pushes(nvtx: FakeNvtx) -> dict[str, int]:
    """Pushes per range name, not counting ranges nested in another one (a shared-key model's
    memory encoder encodes its frame as a query first when it has none), after checking that
    every push was popped and that nothing else nests."""
    assert not nvtx.stack, f"ranges left open: {nvtx.stack}"
    pushes = [m for kind, m in nvtx.events if kind == "push"]
    pops = [m for kind, m in nvtx.events if kind == "pop"]
    assert sorted(pushes) == sorted(pops)
    assert set(nvtx.nested) <= {(Graph.MEMORY_ENCODER, Graph.QUERY_ENCODER)}, nvtx.nested
    inner = [i for _, i in nvtx.nested]
    return {name: pushes.count(name) - inner.count(name) for name in set(pushes)}


def _propagate(runner, frames=5, h=70, w=90):
    from mlvos.runtime.predictor import VideoPredictor

    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), np.uint8)
    mask[20:50, 30:60] = 1
    pred = VideoPredictor(runner, mem_every=2)
    pred.add_mask(0, mask)
    for _ in range(frames):
        pred.step(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- the switch
@pytest.mark.parametrize(
    "flag, cuda, on",
    [(None, False, False), (None, True, True), ("1", False, True), ("0", True, False)],
    ids=["unset-cpu", "unset-cuda", "forced-cpu", "off-cuda"],
)
def test_ranges_follow_the_device_and_the_switch(fake_nvtx, monkeypatch, flag, cuda, on):
    if flag is None:
        monkeypatch.delenv(NVTX_ENV, raising=False)
    else:
        monkeypatch.setenv(NVTX_ENV, flag)
    ranges = nvtx_ranges(cuda=cuda)
    assert (ranges is not None) == on
    if on:
        assert ranges == NvtxRanges(fake_nvtx.push_range, fake_nvtx.pop_range)


def test_without_the_nvtx_package_cuda_uses_the_backend_fallback(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "nvtx", None)  # `import nvtx` raises ImportError
    monkeypatch.delenv(NVTX_ENV, raising=False)
    own = NvtxRanges(lambda message: None, lambda: None)
    assert nvtx_ranges(cuda=True, fallback=lambda: own) is own
    assert nvtx_ranges(cuda=True) is None
    monkeypatch.setenv(NVTX_ENV, "1")
    assert nvtx_ranges(cuda=False, fallback=lambda: own) is None  # torch's needs a CUDA build
    assert "pip install nvtx" in caplog.text


def test_a_bad_switch_value_says_which_values_work(monkeypatch):
    monkeypatch.setenv(NVTX_ENV, "yes")
    with pytest.raises(InputError, match=r"MLVOS_NVTX='yes'.*1 .*0 "):
        nvtx_ranges(cuda=True)


# --------------------------------------------------------------------------- the runners
def test_torch_runner_ranges_each_stage(fake_nvtx, monkeypatch):
    pytest.importorskip("torch")
    from mlvos.model.registry import build_model
    from mlvos.runtime.backends.torch_backend import TorchRunner

    model = build_model("tiny", seed=0).eval()
    monkeypatch.delenv(NVTX_ENV, raising=False)
    with TorchRunner(model, device="cpu", capacity=4) as runner:
        assert runner.nvtx is None  # CPU: off unless asked for
        _propagate(runner)
    assert fake_nvtx.events == []
    monkeypatch.setenv(NVTX_ENV, "1")
    with TorchRunner(model, device="cpu", capacity=4) as runner:
        _propagate(runner)
    pushes = _outer_pushes(fake_nvtx)
    assert set(pushes) == STAGES
    # frame 0 carries the mask (memory only); frames 1-4 are each encoded and read once
    assert pushes[Graph.QUERY_ENCODER] == pushes[Graph.READ_DECODER] == 4


@pytest.fixture(scope="module")
def export_dir(decisive_export):
    pytest.importorskip("onnxruntime")
    return decisive_export(precisions=("fp32",), validate=False)


@pytest.mark.slow
def test_trt_runner_ranges_each_stage_by_default(
    fakes, fake_nvtx, export_dir, tmp_path, monkeypatch
):
    from mlvos.runtime.backends.trt import Profile, TrtRunner
    from mlvos.runtime.manifest import Manifest

    monkeypatch.delenv(NVTX_ENV, raising=False)
    profile = Profile(
        max_objects=2, opt_objects=1, max_height=96, max_width=96, opt_height=96, opt_width=96
    )
    with TrtRunner(
        Manifest.load(export_dir), "fp32", engine_dir=tmp_path / "engines", profile=profile
    ) as runner:
        _propagate(runner)
    pushes = _outer_pushes(fake_nvtx)
    assert set(pushes) == STAGES
    assert pushes[Graph.QUERY_ENCODER] == pushes[Graph.READ_DECODER] == 4


@pytest.mark.slow
@pytest.mark.parametrize("io_binding", [False, True], ids=["numpy", "io-binding"])
def test_ort_runners_range_each_stage_when_asked(fake_nvtx, export_dir, monkeypatch, io_binding):
    from mlvos.runtime.backends import open_runner

    monkeypatch.setenv(NVTX_ENV, "1")
    with open_runner(export_dir, backend="ort", device="cpu", io_binding=io_binding) as runner:
        _propagate(runner)
    assert set(_outer_pushes(fake_nvtx)) == STAGES
