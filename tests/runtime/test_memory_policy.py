import pytest

from mlvos.runtime.predictor import ANNOTATED, PERIODIC, TEMP, MemoryPolicy


def _run(capacity, n, mem_every, annotated=(0,)):
    pol = MemoryPolicy(capacity)
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
