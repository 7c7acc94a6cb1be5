"""Training clips: static-image simulation keeps pixels and labels aligned; video sampler rules."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mlvos.data.clips import sample_indices, sample_video_clip, simulate_clip
from mlvos.errors import InputError

COLOURS = np.array([[20, 20, 220], [230, 30, 30], [30, 220, 40], [240, 240, 20]], np.uint8)


def _scene(h=120, w=160):
    """Mask with 3 objects; the image paints each id a flat colour, so colour == label."""
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (40, 50), 25, 1, -1)
    cv2.rectangle(mask, (90, 20), (140, 70), 2, -1)
    cv2.ellipse(mask, (100, 95), (40, 15), 20, 0, 360, 3, -1)
    return COLOURS[mask], mask


def test_simulate_clip_shapes_and_alignment():
    image, mask = _scene()
    clip = simulate_clip(image, mask, np.random.default_rng(0), frames=3, size=96)
    assert clip.frames.shape == (3, 96, 96, 3) and clip.frames.dtype == np.uint8
    assert clip.labels.shape == (3, 96, 96) and clip.labels.dtype == np.uint8
    assert 1 <= clip.num_objects <= 3
    present = set(np.unique(clip.labels[0]).tolist())
    assert present == set(range(clip.num_objects + 1))
    # different warps per frame
    assert not np.array_equal(clip.labels[0], clip.labels[1])
    # relabelled ids keep order of the original ids; recover colour of each new id
    for t in range(3):
        lab, img = clip.labels[t], clip.frames[t].astype(int)
        for new in range(1, clip.num_objects + 1):
            inner = cv2.erode((lab == new).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            if inner.sum() < 20:
                continue
            colours = img[inner]
            # the pixel colour under each label is one flat colour (image warped like the mask)
            ref = np.median(colours, axis=0)
            assert (np.abs(colours - ref).max(1) < 40).mean() > 0.98
            assert np.abs(COLOURS[1:].astype(int) - ref).sum(1).min() < 40
        # background: the background colour, or black where the warp left the source
        inner = cv2.erode((lab == 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        bg = np.abs(img[inner] - COLOURS[0].astype(int)).max(1) < 40
        black = img[inner].max(1) < 40
        assert (bg | black).mean() > 0.98


def test_simulate_clip_max_objects_and_seed():
    image, mask = _scene()
    a = simulate_clip(image, mask, 5, frames=2, size=64, max_objects=1)
    b = simulate_clip(image, mask, 5, frames=2, size=64, max_objects=1)
    assert a.num_objects == 1 and a.labels.max() == 1
    np.testing.assert_array_equal(a.frames, b.frames)
    with pytest.raises(InputError, match="uint8"):
        simulate_clip(image.astype(np.float32), mask, 0)
    with pytest.raises(InputError, match="same size"):
        simulate_clip(image, mask[:-1], 0)


def _video(n=12, h=100, w=140):
    frames = [np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)]  # value encodes index
    masks = []
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        m[10:40, 10 + i:40 + i] = 1
        m[60:90, 80:120] = 2
        if i >= 1:
            m[45:55, 60:70] = 3  # appears after the first frame
        masks.append(m)
    return frames, masks


@pytest.mark.parametrize("max_skip", [1, 2, 4])
def test_sample_video_clip_respects_max_skip_and_crop(max_skip):
    frames, masks = _video()
    rng = np.random.default_rng(max_skip)
    gaps = set()
    for _ in range(40):
        clip = sample_video_clip(frames, masks, rng, num_frames=3, max_skip=max_skip, crop=64,
                                 max_objects=5)
        assert clip.frames.shape == (3, 64, 64, 3) and clip.labels.shape == (3, 64, 64)
        idx = [int(f[0, 0, 0]) // 10 for f in clip.frames]
        d = np.diff(idx)
        assert (d >= 1).all() and (d <= max_skip).all()
        gaps.update(d.tolist())
        assert clip.labels.max() <= clip.num_objects
        assert set(np.unique(clip.labels[0]).tolist()) == set(range(clip.num_objects + 1))
    assert max(gaps) == max_skip  # the full range is used


def test_sample_video_clip_objects_resize_and_unannotated():
    frames, masks = _video(h=50, w=70)  # smaller than the crop: resized up first
    rng = np.random.default_rng(0)
    clip = sample_video_clip(frames, masks, rng, crop=96, max_objects=1)
    assert clip.frames.shape == (3, 96, 96, 3) and clip.num_objects == 1
    assert clip.labels.max() == 1
    # object 3 is absent from frame 0: never kept even when frame 0 is sampled
    frames, masks = _video()
    masks = [m if i in (0, 3, 6, 9) else None for i, m in enumerate(masks)]
    for _ in range(10):
        clip = sample_video_clip(frames, masks, rng, max_skip=1, crop=64, max_objects=5)
        idx = [int(f[0, 0, 0]) // 10 for f in clip.frames]
        assert set(idx) <= {0, 3, 6, 9} and np.all(np.diff(idx) == 3)  # adjacent annotated
    clip = sample_video_clip(frames[:1], [masks[0]], rng, crop=64, max_objects=5)
    assert clip.num_objects <= 2  # id 3 is not in frame 0
    with pytest.raises(InputError, match="masks"):
        sample_video_clip(frames, masks[:-1], rng)


def test_sample_indices_short_video():
    rng = np.random.default_rng(0)
    assert sample_indices([4, 7], rng, 3, 5) == [4, 7, 7]
    with pytest.raises(InputError, match="no annotated"):
        sample_indices([], rng, 3, 5)
