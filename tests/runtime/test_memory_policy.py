import logging
from types import SimpleNamespace

import numpy as np
import pytest

from mlvos.errors import InputError
from mlvos.runtime.predictor import ANNOTATED, PERIODIC, TEMP, MemoryPolicy, VideoPredictor


def _run(capacity, n, mem_every, annotated=(0,), annotations="keep-latest"):
    pol = MemoryPolicy(capacity, annotations)
    history = []
    for t in range(n):
        kind = ANNOTATED if t in annotated else PERIODIC if t % mem_every == 0 else TEMP
        pol.place(t, kind)
        history.append(sorted(f for _, f, _ in pol.frames()))
    return pol, history


def test_schedule_first_every_nth_and_previous():
    pol, hist = _run(capacity=4, n=13, mem_every=5)
    assert hist[1] == [0, 1]
    assert hist[4] == [0, 4]
    assert hist[5] == [0, 5]  # frame 4 (temporary) superseded by permanent frame 5
    assert hist[6] == [0, 5, 6]
    assert hist[10] == [0, 5, 10]
    assert hist[12] == [0, 5, 10, 12]


def test_bounded_and_first_frame_kept_on_long_video():
    pol, hist = _run(capacity=3, n=1000, mem_every=5)
    assert all(len(h) <= 3 for h in hist)
    assert all(h[0] == 0 for h in hist)
    assert hist[-1] == [0, 995, 999]


def test_capacity_two_keeps_annotation_and_previous_frame():
    _, hist = _run(capacity=2, n=12, mem_every=5)
    assert all(h[0] == 0 and len(h) <= 2 for h in hist)
    assert hist[5] == [0, 5] and hist[6] == [0, 6]


def test_later_annotations_are_permanent():
    _, hist = _run(capacity=4, n=40, mem_every=5, annotated=(0, 7))
    assert all({0, 7} <= set(h) for h in hist[7:])


def test_invalidated_slots_reported():
    pol = MemoryPolicy(3)
    pol.place(0, ANNOTATED)
    temp_slot, _ = pol.place(1, TEMP)
    slot, invalid = pol.place(2, PERIODIC)
    assert invalid == [] if slot == temp_slot else invalid == [temp_slot]


def test_bad_capacity():
    with pytest.raises(ValueError, match="capacity"):
        MemoryPolicy(1)


def _kinds(pol):
    return {f: k for _, f, k in pol.frames()}


def test_periodic_frames_are_evicted_before_annotations(caplog):
    with caplog.at_level(logging.WARNING, logger="mlvos.runtime.predictor"):
        _, hist = _run(capacity=4, n=21, mem_every=5, annotated=(0, 12))
    assert hist[10] == [0, 5, 10]
    assert hist[12] == [0, 10, 12]  # the oldest periodic frame (5) made room
    assert hist[20] == [0, 12, 20]
    assert not caplog.records  # no annotation was evicted


def test_periodic_frame_never_displaces_an_annotation():
    pol, hist = _run(capacity=3, n=7, mem_every=5, annotated=(0, 2))
    # both permanent slots are annotated: frame 5 is kept as the previous frame only
    assert hist[5] == [0, 2, 5] and hist[6] == [0, 2, 6]
    assert _kinds(pol) == {0: ANNOTATED, 2: ANNOTATED, 6: TEMP}


def test_keep_latest_keeps_first_and_latest_annotations_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="mlvos.runtime.predictor"):
        pol, hist = _run(capacity=4, n=15, mem_every=5, annotated=(0, 3, 6, 8, 12))
    assert hist[6] == [0, 3, 6]  # periodic frame 5 went first, silently
    assert hist[8] == [0, 6, 8]  # then the oldest annotation after the first, with a warning
    assert hist[10] == [0, 6, 8, 10]
    assert hist[-1] == [0, 8, 12, 14]
    assert _kinds(pol) == {0: ANNOTATED, 8: ANNOTATED, 12: ANNOTATED, 14: TEMP}
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert "annotation of frame 3 is evicted for the annotation of frame 8" in messages[0]
    assert "annotation of frame 6 is evicted for the annotation of frame 12" in messages[1]
    assert all("--capacity" in m and "refuse" in m for m in messages)


def test_capacity_two_keep_latest_replaces_the_annotation_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mlvos.runtime.predictor"):
        _, hist = _run(capacity=2, n=6, mem_every=5, annotated=(0, 3))
    assert hist[3] == [3] and hist[5] == [3, 5]
    assert "annotation of frame 0 is evicted" in caplog.records[0].getMessage()


def test_refuse_raises_naming_the_capacity_flag_and_keeps_the_bank():
    pol = MemoryPolicy(3, annotations="refuse")
    for t, kind in enumerate((ANNOTATED, TEMP, ANNOTATED, TEMP)):
        pol.place(t, kind)
    before = pol.frames()
    with pytest.raises(InputError, match=r"frame 4 does not fit.*frames \[0, 2\].*at least 4: "
                                         r"`mlvos export --capacity`"):
        pol.place(4, ANNOTATED)
    assert pol.frames() == before
    pol.place(5, PERIODIC)  # a periodic frame evicts no annotation: no refusal
    assert _kinds(pol) == {0: ANNOTATED, 2: ANNOTATED, 5: TEMP}


def test_bad_annotation_policy():
    with pytest.raises(InputError, match="keep-latest"):
        MemoryPolicy(3, annotations="keep-first")


def test_predictor_refuses_in_add_mask_before_any_frame_runs():
    pred = VideoPredictor(SimpleNamespace(capacity=3), annotations="refuse")
    mask = np.ones((40, 40), np.uint8)
    pred.add_mask(0, mask)
    pred.add_mask(4, mask)
    pred.add_mask(4, mask)  # replaces the pending mask of frame 4: still two annotations
    with pytest.raises(InputError, match=r"frame 9 does not fit.*frames \[0, 4\].*--capacity"):
        pred.add_mask(9, mask)
    assert sorted(pred.pending) == [0, 4]
