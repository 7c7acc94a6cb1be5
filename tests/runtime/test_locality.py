"""The location prior against look-alikes (runtime.locality), on arrays and in the predictor."""

import numpy as np
import pytest

from mlvos.errors import InputError
from mlvos.runtime.locality import MIN_SIGMA, apply_locality, check_scale, slot_boxes


def test_slot_boxes_inclusive_and_absent_objects():
    slots = np.zeros((20, 30), np.uint8)
    slots[2:5, 3:9] = 1
    slots[10, 20] = 3
    slots[0, 0] = 7  # a slot beyond `objects` is ignored
    boxes = slot_boxes(slots, 3)
    assert boxes.tolist() == [[2, 3, 4, 8], [-1, -1, -1, -1], [10, 20, 10, 20]]
    assert slot_boxes(slots, 0).shape == (0, 4)


def test_slot_box_is_the_main_components_not_the_leaks():
    # A label that leaked onto a small look-alike far away: the prior stays on the main body
    # (a box around both would span the frame and hold nothing back).
    slots = np.zeros((40, 200), np.uint8)
    slots[10:30, 10:25] = 1
    slots[12:18, 170:176] = 1  # the leak
    slots[5:7, 100:102] = 2
    slots[30:33, 100:103] = 2  # two pieces: the larger wins
    slots[20, 60] = 1
    slots[21, 61] = 1  # diagonal neighbours are one 8-connected piece, still smaller
    assert slot_boxes(slots, 2).tolist() == [[10, 10, 29, 24], [30, 100, 32, 102]]


def test_look_alike_far_from_the_previous_box_loses_the_label():
    # Two identical blobs of object 1; last frame it was at the left one.
    h, w = 64, 256
    probs = np.zeros((2, h, w), np.float32)
    probs[0, 20:40, 10:30] = 0.8
    probs[0, 20:40, 200:220] = 0.8
    probs[1, 20:40, 100:120] = 0.6  # object 2 has no previous box: untouched
    boxes = np.array([[18, 8, 41, 31], [-1, -1, -1, -1]])
    weighted, slots = apply_locality(probs, boxes, 1.0)
    assert (slots[20:40, 10:30] == 1).all()
    assert (slots[20:40, 200:220] == 0).all()
    assert (slots[20:40, 100:120] == 2).all()
    # Inside the box nothing changes; far away object 1's weight is ~0.
    assert np.allclose(weighted[0, 20:40, 10:30], 0.8)
    assert weighted[0, 30, 210] < 1e-3
    # Still a distribution with the background.
    assert (weighted.sum(axis=0) <= 1.0 + 1e-6).all() and (weighted >= 0).all()
    # The prior of a small object is at least MIN_SIGMA wide: one pixel away it keeps its label.
    tiny = np.zeros((1, h, w), np.float32)
    tiny[0, 30, 41] = 0.9
    _, s = apply_locality(tiny, np.array([[30, 40, 30, 40]]), 0.5)
    assert s[30, 41] == 1 and np.exp(-0.5 * (1 / MIN_SIGMA) ** 2) * 0.9 > 0.1


@pytest.mark.parametrize("bad", [-1, float("nan"), "x", None])
def test_bad_scale_is_refused(bad):
    with pytest.raises(InputError, match="locality"):
        check_scale(bad)
    assert check_scale(0) == 0.0 and check_scale("1.5") == 1.5


def test_predictor_applies_the_prior_on_a_real_export(decisive_export):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from mlvos.data.synth import synth_sequence
    from mlvos.runtime.backends import open_runner
    from mlvos.runtime.predictor import VideoPredictor

    video = list(synth_sequence(11, 6, 90, 120, num_objects=3))
    export_dir = decisive_export(capacity=4)
    with open_runner(export_dir, backend="ort") as runner:
        out = {}
        for scale in (0.0, 0.3):
            pred = VideoPredictor(runner, mem_every=3, locality=scale)
            pred.add_mask(0, video[0][1])
            seen = []
            orig = runner.read_decode

            def spy(query, n, orig=orig, seen=seen):
                seen.append(n)
                return orig(query, n)

            runner.read_decode = spy
            out[scale] = [pred.step(f) for f, _ in video]
            runner.read_decode = orig
            assert seen == [3] * (len(video) - 1)
    # Frame 0 is the given mask either way; with the prior every later object pixel lies
    # within reach of that object's previous box, and the prior changed something.
    assert (out[0.0][0] == out[0.3][0]).all()
    changed = False
    for prev, cur in zip(out[0.3][:-1], out[0.3][1:]):
        for k in np.unique(cur[cur > 0]):
            ys, xs = np.nonzero(prev == k)
            if ys.size == 0:
                continue
            cy, cx = np.nonzero(cur == k)
            reach = 8 * max(MIN_SIGMA, 0.3 * max(np.ptp(ys) + 1, np.ptp(xs) + 1))
            assert cy.min() >= ys.min() - reach and cy.max() <= ys.max() + reach
            assert cx.min() >= xs.min() - reach and cx.max() <= xs.max() + reach
    for a, b in zip(out[0.0][1:], out[0.3][1:]):
        changed |= bool((a != b).any())
    assert changed
