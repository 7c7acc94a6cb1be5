"""Synthetic dataset: determinism, DAVIS layout, exact labels, object counts, exit/re-entry."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mlvos.data.synth import SynthSequence, make_synthetic_dataset, synth_clip, synth_sequence
from mlvos.errors import InputError
from mlvos.palette import read_frame, read_mask

SMALL = dict(sequences=3, frames=5, height=72, width=128)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", seed=7, **SMALL)


def test_same_seed_byte_identical_different_seed_differs(dataset, tmp_path):
    again = make_synthetic_dataset(tmp_path / "again", seed=7, **SMALL)
    other = make_synthetic_dataset(tmp_path / "other", seed=8, **SMALL)
    a, b, c = _files(dataset), _files(again), _files(other)
    assert a == b
    assert a.keys() == c.keys()
    assert any(a[k] != c[k] for k in a if k.endswith((".jpg", ".png")))


def test_davis_layout_every_frame_annotated(dataset):
    names = (dataset / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert names == ["synth-0000", "synth-0001", "synth-0002"]
    meta = json.loads((dataset / "synth.json").read_text())
    assert meta["seed"] == 7 and meta["frames"] == 5 and meta["height"] == 72
    for name in names:
        jpgs = sorted((dataset / "JPEGImages" / "480p" / name).iterdir())
        pngs = sorted((dataset / "Annotations" / "480p" / name).iterdir())
        assert [p.name for p in jpgs] == [f"{t:05d}.jpg" for t in range(5)]
        assert [p.stem for p in pngs] == [p.stem for p in jpgs]
        first = read_mask(pngs[0])
        k = meta["objects"][name]
        assert 1 <= k <= 5
        assert set(np.unique(first).tolist()) == set(range(k + 1))  # all objects in frame 0
        for png in pngs:
            assert read_mask(png).shape == (72, 128)
            assert read_mask(png).max() <= k
            assert read_frame(png.parent.parent.parent.parent / "JPEGImages" / "480p" / name
                              / f"{png.stem}.jpg").shape == (72, 128, 3)
    assert not list(dataset.parent.glob(".ds.*"))  # temp build folder renamed away


def test_existing_output_refused_unless_force(dataset):
    with pytest.raises(InputError, match="already exists.*--force"):
        make_synthetic_dataset(dataset, seed=7, **SMALL)
    make_synthetic_dataset(dataset, seed=7, force=True, **SMALL)
    assert (dataset / "synth.json").is_file()


@pytest.mark.parametrize("kwargs", [dict(frames=0), dict(min_objects=3, max_objects=2),
                                    dict(height=4), dict(seed=-1)])
def test_bad_arguments(tmp_path, kwargs):
    args = dict(sequences=1, frames=2, seed=0, height=32, width=32) | kwargs
    with pytest.raises(InputError):
        make_synthetic_dataset(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_object_counts_and_first_frame_visibility():
    for seed in range(12):
        seq = SynthSequence(seed, 4, 64, 96, min_objects=1, max_objects=5)
        assert 1 <= seq.num_objects <= 5
        frame, label = seq.render(0)
        assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
        assert label.shape == (64, 96) and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) == set(range(seq.num_objects + 1))
    assert SynthSequence(0, 2, 64, 96, num_objects=4).num_objects == 4


def _saturation(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32) / 255.0


def test_labels_consistent_with_pixels():
    """Label regions carry their object's appearance: saturated, stable colour per id."""
    for seed in range(4):
        pairs = list(synth_sequence(seed, 8, 96, 160, num_objects=3))
        ref = None
        for frame, label in pairs:
            sat = _saturation(frame)
            means = {}
            for oid in range(4):
                inner = cv2.erode((label == oid).astype(np.uint8), np.ones((5, 5), np.uint8))
                if inner.sum() >= 40:
                    means[oid] = frame[inner > 0].reshape(-1, 3).mean(0)
                    if oid:
                        # objects are saturated, the background is not
                        assert sat[inner > 0].mean() > sat[label == 0].mean() + 0.15
            if ref is None:
                ref = means
                assert len(ref) >= 2
                continue
            for oid, m in means.items():  # same id -> nearest mean colour of frame 0
                if oid not in ref:
                    continue
                nearest = min(ref, key=lambda r, m=m: np.abs(ref[r] - m).sum())
                assert nearest == oid


def test_forced_exit_and_reentry():
    for seed in range(5):
        labels = [lab for _, lab in synth_sequence(seed, 21, 64, 112, force_exit=True)]
        assert (labels[0] == 1).sum() > 0
        assert (labels[10] == 1).sum() == 0  # fully outside at mid sequence
        assert (labels[20] == 1).sum() > 0  # and back by the end
    with pytest.raises(InputError, match="force_exit"):
        SynthSequence(0, 3, 64, 64, force_exit=True)


def test_synth_clip():
    clip = synth_clip(np.random.default_rng(3), num_frames=3, size=64, max_skip=4)
    assert clip.frames.shape == (3, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.labels.shape == (3, 64, 64) and clip.labels.dtype == np.uint8
    assert 1 <= clip.num_objects <= 3
    assert set(np.unique(clip.labels[0]).tolist()) == set(range(clip.num_objects + 1))
