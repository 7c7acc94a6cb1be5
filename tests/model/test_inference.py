import numpy as np
import pytest

from mlvos.errors import InputError
from mlvos.model.inference import propagate
from mlvos.model.registry import build_model


@pytest.fixture(scope="module")
def tiny():
    return build_model("tiny", seed=0).eval()


def _video(n, h=50, w=70):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_propagate_keeps_ids_and_size(tiny):
    frames = _video(8)
    mask = np.zeros((50, 70), np.uint8)
    mask[5:20, 5:20] = 3
    mask[30:45, 40:60] = 7
    out = list(propagate([tiny], frames, mask, capacity=3, mem_every=2))
    assert len(out) == 8
    assert np.array_equal(out[0], mask)
    for o in out:
        assert o.shape == (50, 70) and o.dtype == np.uint8
        assert set(np.unique(o)) <= {0, 3, 7}


def test_ensemble_runs(tiny):
    other = build_model("tiny", seed=1).eval()
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 10:30] = 1
    out = list(propagate([tiny, other], _video(3), mask))
    assert len(out) == 3


def test_bad_inputs(tiny):
    frames = _video(2)
    with pytest.raises(InputError, match="no object"):
        list(propagate([tiny], frames, np.zeros((50, 70), np.uint8)))
    mask = np.ones((40, 70), np.uint8)
    with pytest.raises(InputError, match="must match"):
        list(propagate([tiny], frames, mask))
    with pytest.raises(InputError, match="uint8 label map"):
        list(propagate([tiny], frames, np.ones((50, 70), np.int32)))
    with pytest.raises(InputError, match="capacity"):
        list(propagate([tiny], frames, np.ones((50, 70), np.uint8), capacity=1))
    frames[1] = frames[1][:40]
    with pytest.raises(InputError, match="sizes must match"):
        list(propagate([tiny], frames, np.ones((50, 70), np.uint8)))
