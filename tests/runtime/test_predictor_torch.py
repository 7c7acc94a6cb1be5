"""The runtime's frame loop on the torch backend reproduces the PyTorch reference exactly."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlvos.errors import InputError  # noqa: E402
from mlvos.model.checkpoint import save_checkpoint  # noqa: E402
from mlvos.model.inference import propagate  # noqa: E402
from mlvos.model.registry import build_model  # noqa: E402
from mlvos.runtime.loader import open_runner  # noqa: E402
from mlvos.runtime.predictor import VideoPredictor  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, build_model("tiny", seed=0))
    return path


def _video(n=9, h=70, w=90):
    from mlvos.data.synth import synth_sequence

    return list(synth_sequence(5, n, h, w, num_objects=2))


def test_matches_reference(ckpt):
    video = _video()
    frames = [f for f, _ in video]
    mask = video[0][1]
    model = open_runner(ckpt, backend="torch", capacity=4).model
    ref = list(propagate([model], frames, mask, capacity=4, mem_every=3))
    with open_runner(ckpt, backend="torch", capacity=4) as runner:
        pred = VideoPredictor(runner, mem_every=3)
        pred.add_mask(0, mask)
        out = [pred.step(f) for f in frames]
    for t, (a, b) in enumerate(zip(ref, out)):
        assert np.array_equal(a, b), f"frame {t}"


def test_object_joins_and_leaves(ckpt):
    video = _video(8)
    frames = [f for f, _ in video]
    first = video[0][1]
    ids = [int(i) for i in np.unique(first) if i]
    with open_runner(ckpt, backend="torch", capacity=3) as runner:
        pred = VideoPredictor(runner, mem_every=2)
        pred.add_mask(0, np.where(first == ids[0], first, 0).astype(np.uint8))
        pred.step(frames[0])
        assert pred.object_ids == [ids[0]]
        later = np.zeros_like(first)
        later[10:30, 10:30] = 9
        pred.add_mask(3, later)
        for t in range(1, 6):
            out = pred.step(frames[t])
            assert set(np.unique(out)) <= {0, ids[0], 9}
            if t == 3:
                assert (out[10:30, 10:30] == 9).all()
        assert pred.object_ids == [ids[0], 9]
        pred.remove_object(ids[0])
        assert pred.object_ids == [9]
        out = pred.step(frames[6])
        assert set(np.unique(out)) <= {0, 9}
        pred.reset()
        assert pred.object_ids == [] and pred.frame_index == 0


def _noise_video(n=3, h=90, w=160):
    """n random (h, w, 3) uint8 frames and a first mask with one rectangle (id 1)."""
    frames = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
              for i in range(n)]
    mask = np.zeros((h, w), np.uint8)
    mask[20:60, 30:100] = 1
    return frames, mask


@pytest.mark.parametrize("options, inner", [
    ({"max_side": 64}, (36, 64)),
    ({"scale": 1.5}, (135, 240)),
    ({"scale": 2.0, "max_side": 200}, (112, 200)),  # max_side caps the scaled size
])
def test_internal_size_and_labels_back_at_input_size(ckpt, options, inner):
    frames, mask = _noise_video()
    with open_runner(ckpt, backend="torch") as runner:
        pred = VideoPredictor(runner, **options)
        pred.add_mask(0, mask)
        outs = [pred.step(f) for f in frames]
    assert pred.inner == inner
    assert all(o.shape == (90, 160) for o in outs)


def test_bad_scale(ckpt):
    frames, mask = _noise_video(n=1)
    with open_runner(ckpt, backend="torch") as runner:
        for bad in (0.1, 5.0, "2", True):
            with pytest.raises(InputError, match="scale must be a number"):
                VideoPredictor(runner, scale=bad)
        tiny = VideoPredictor(runner, scale=0.25)
        tiny.add_mask(0, mask)
        with pytest.raises(InputError, match="raise scale or max_side"):
            tiny.step(frames[0])


def test_bad_input(ckpt):
    with open_runner(ckpt, backend="torch") as runner:
        pred = VideoPredictor(runner)
        with pytest.raises(InputError, match="uint8 label map"):
            pred.add_mask(0, np.zeros((50, 50), np.int64))
        with pytest.raises(InputError, match="no object"):
            pred.add_mask(0, np.zeros((50, 50), np.uint8))
        with pytest.raises(InputError, match="not present"):
            pred.add_mask(0, np.ones((50, 50), np.uint8), object_ids=[4])
        pred.add_mask(0, np.ones((40, 50), np.uint8))
        with pytest.raises(InputError, match="frame's size"):
            pred.step(np.zeros((50, 50, 3), np.uint8))
        pred.reset()
        pred.step(np.zeros((50, 50, 3), np.uint8))
        with pytest.raises(InputError, match="same size"):
            pred.step(np.zeros((60, 50, 3), np.uint8))
        with pytest.raises(InputError, match="already processed"):
            pred.add_mask(0, np.ones((50, 50), np.uint8))
        with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
            pred.step(np.zeros((50, 50), np.uint8))
        small = VideoPredictor(runner, max_objects=1)
        with pytest.raises(InputError, match="at most 1"):
            m = np.zeros((50, 50), np.uint8)
            m[:5], m[-5:] = 1, 2
            small.add_mask(0, m)
