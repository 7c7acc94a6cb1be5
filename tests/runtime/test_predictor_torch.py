"""The runtime's frame loop (the only one) on the torch backend: STM's schedule reproduced exactly,
ensembles, ids, errors."""

import dataclasses
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlvos.errors import InputError  # noqa: E402
from mlvos.model.checkpoint import save_checkpoint  # noqa: E402
from mlvos.model.registry import build_model  # noqa: E402
from mlvos.runtime.backends import open_runner  # noqa: E402
from mlvos.runtime.backends.ensemble import EnsembleRunner  # noqa: E402
from mlvos.runtime.backends.torch_backend import TorchRunner  # noqa: E402
from mlvos.runtime.predictor import (  # noqa: E402  # noqa: E402
    ANNOTATED,
    PERIODIC,
    TEMP,
    MemoryPolicy,
    VideoPredictor,
    propagate,
)
from mlvos.runtime.spec import padding_for  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, build_model("tiny", seed=0))
    return path


def _video(n=9, h=70, w=90):
    from mlvos.data.synth import synth_sequence

    return list(synth_sequence(5, n, h, w, num_objects=2))


@torch.no_grad()
def _stm_reference(model, frames, mask, capacity, mem_every):
    """STM's propagation written directly on the model's stage methods (an independent check of
    the predictor's bookkeeping: bank slots, validity, padding, aggregation, id mapping)."""
    from mlvos.model.decoder import soft_aggregate

    ids = [int(i) for i in np.unique(mask) if i]
    lut = np.array([0, *ids], np.uint8)
    pad = padding_for(*mask.shape, model.stride)
    policy = MemoryPolicy(capacity)
    bank = None

    def x_of(frame):
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
        return torch.nn.functional.pad(x, pad.as_torch)

    def write(kv, t, kind):
        nonlocal bank
        key, value = kv
        if bank is None:
            o = value.shape[0]  # key: 1 row for a shared-key model (object-free), else o
            bank = [key.new_zeros(key.shape[0], capacity, *key.shape[1:]),
                    value.new_zeros(o, capacity, *value.shape[1:]), key.new_zeros(o, capacity)]
        slot, invalid = policy.place(t, kind)
        bank[0][:, slot], bank[1][:, slot] = key, value
        bank[2][:, invalid] = 0
        bank[2][:, slot] = 1

    out = [mask.copy()]
    m = torch.from_numpy(mask)
    probs = torch.nn.functional.pad(torch.stack([(m == i).float() for i in ids]), pad.as_torch)
    write(model.encode_memory(x_of(frames[0]), probs), 0, ANNOTATED)
    for t, frame in enumerate(frames[1:], start=1):
        x = x_of(frame)
        q = model.encode_query(x)
        agg = soft_aggregate(model.read_decode(q, *bank))
        write(model.encode_memory(x, agg[1:], q.key), t, TEMP if t % mem_every else PERIODIC)
        h, w = agg.shape[-2:]
        out.append(lut[agg[:, pad.top:h - pad.bottom, pad.left:w - pad.right].argmax(0).numpy()])
    return out


def test_matches_stm_reference(ckpt):
    video = _video()
    frames = [f for f, _ in video]
    mask = video[0][1]
    with open_runner(ckpt, backend="torch", capacity=4) as runner:
        ref = _stm_reference(runner.model, frames, mask, capacity=4, mem_every=3)
        out = list(propagate(runner, frames, mask, mem_every=3))
    for t, (a, b) in enumerate(zip(ref, out)):
        assert np.array_equal(a, b), f"frame {t}"


def test_ensemble_averages_member_probabilities():
    a, b = build_model("tiny", seed=0).eval(), build_model("tiny", seed=1).eval()
    video = _video(4)
    frames, mask = [f for f, _ in video], video[0][1]
    single = list(propagate(TorchRunner(a, capacity=3), frames, mask))
    with EnsembleRunner([TorchRunner(a, capacity=3)]) as one:
        assert all(np.array_equal(x, y) for x, y in zip(single, propagate(one, frames, mask)))
    members = [TorchRunner(a, capacity=3), TorchRunner(b, capacity=3)]
    with EnsembleRunner(members) as both:
        pred = VideoPredictor(both)
        pred.add_mask(0, mask)
        pred.step(frames[0])
        query = both.encode_query(both.upload(pred._prepare(frames[1])))
        probs, labels = both.read_decode(query, 2)
        each = [m.download(m.read_decode(q, 2)[0]) for m, q in zip(members, query)]
        assert np.allclose(probs, (each[0] + each[1]) / 2)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    with pytest.raises(InputError, match="share stride and capacity"):
        EnsembleRunner([TorchRunner(a, capacity=3), TorchRunner(b, capacity=4)])
    # the members' schedule where they agree (tiny's), STM's where they do not
    assert EnsembleRunner(members).schedule == (5, 5)
    stm = build_model("tiny", seed=2).eval()
    stm.config = dataclasses.replace(stm.config, prev_every=1)
    assert EnsembleRunner([TorchRunner(a, capacity=3), TorchRunner(stm, capacity=3)]).schedule \
        == (5, 1)


def test_annotations_beyond_the_bank_keep_first_and_latest_with_a_warning(ckpt, caplog):
    video = _video(7)
    frames = [f for f, _ in video]
    with open_runner(ckpt, backend="torch", capacity=3) as runner:
        pred = VideoPredictor(runner, mem_every=2)  # annotations="keep-latest"
        for t in (0, 2, 4):
            pred.add_mask(t, video[t][1])
        with caplog.at_level(logging.WARNING, logger="mlvos.runtime.predictor"):
            for frame in frames:
                pred.step(frame)
        kept = sorted((f, k) for _, f, k in pred.policy.frames())
        assert kept == [(0, ANNOTATED), (4, ANNOTATED), (6, TEMP)]
        assert pred.valid[:len(pred.object_ids)].all()  # every slot written, none stale
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        assert "annotation of frame 2 is evicted for the annotation of frame 4" in warnings[0]

        refusing = VideoPredictor(runner, annotations="refuse")
        refusing.add_mask(0, video[0][1])
        refusing.add_mask(2, video[2][1])
        with pytest.raises(InputError, match="frame 4 does not fit.*--capacity"):
            refusing.add_mask(4, video[4][1])


def test_propagate_bad_inputs(ckpt):
    video = _video(2, 50, 70)
    frames = [f for f, _ in video]
    with open_runner(ckpt, backend="torch", capacity=3) as runner:
        with pytest.raises(InputError, match="no object"):
            list(propagate(runner, frames, np.zeros((50, 70), np.uint8)))
        with pytest.raises(InputError, match="masks must have the frame's size"):
            list(propagate(runner, frames, np.ones((40, 70), np.uint8)))
        with pytest.raises(InputError, match="uint8 label map"):
            list(propagate(runner, frames, np.ones((50, 70), np.int32)))
        with pytest.raises(InputError, match="all frames of a video must have the same size"):
            list(propagate(runner, [frames[0], frames[1][:40]], np.ones((50, 70), np.uint8)))


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
