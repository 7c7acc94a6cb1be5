"""Training clips: static-image clip simulation (pre-training) and video clip sampling (main).

Pure numpy + cv2 (no torch). A clip is T frames (T, H, W, 3) uint8 RGB, labels (T, H, W) uint8
object ids relabelled 1..k (0 = background) over the objects present in the first frame, and k.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mlvos.errors import DatasetError, InputError


class Clip(NamedTuple):
    """frames: (T, H, W, 3) uint8 RGB; labels: (T, H, W) uint8 ids 0..k; num_objects: k."""

    frames: np.ndarray
    labels: np.ndarray
    num_objects: int


def _cv2():
    import cv2  # imported on first use so `import mlvos.data.clips` stays cheap

    return cv2


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _check_image_mask(image: np.ndarray, mask: np.ndarray, what: str = "") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise InputError(
            f"{what}image must be (H, W, 3) uint8 RGB, received shape {shape} dtype "
            f"{getattr(image, 'dtype', type(image).__name__)}; use mlvos.palette.read_frame"
        )
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != np.uint8:
        raise InputError(
            f"{what}mask must be (H, W) uint8 object ids, received shape "
            f"{getattr(mask, 'shape', None)} dtype {getattr(mask, 'dtype', None)}; "
            "use mlvos.palette.read_mask"
        )
    if image.shape[:2] != mask.shape:
        raise InputError(
            f"{what}image is {image.shape[1]}x{image.shape[0]} but mask is "
            f"{mask.shape[1]}x{mask.shape[0]} (WxH); they must have the same size"
        )


def _relabel(labels: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """Map ids in `keep` to 1..len(keep) (in that order) and every other id to 0."""
    lut = np.zeros(256, dtype=np.uint8)
    for new, old in enumerate(keep, start=1):
        lut[int(old)] = new
    return lut[labels]


def _choose_objects(ids: np.ndarray, rng: np.random.Generator, max_objects: int | None) -> list:
    ids = [int(i) for i in ids if i != 0]
    if max_objects is not None and len(ids) > max_objects:
        ids = sorted(rng.choice(ids, size=max_objects, replace=False).tolist())
    return ids


def _elastic_field(rng: np.random.Generator, h: int, w: int, amplitude: float,
                   cells: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement (dx, dy), each (h, w) float32, |d| <= amplitude pixels."""
    cv2 = _cv2()
    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells, 2)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    field = np.clip(field, -1.0, 1.0) * np.float32(amplitude)
    return field[..., 0], field[..., 1]


def _affine_inverse(rng: np.random.Generator, size: int, centre: tuple[float, float],
                    base_scale: float, *, rotation: float, scale: tuple[float, float],
                    shear: float, translate: float) -> np.ndarray:
    """2x3 matrix mapping output pixel (x, y, 1) of a size x size crop to source coordinates."""
    ang = np.deg2rad(rng.uniform(-rotation, rotation))
    sh = np.deg2rad(rng.uniform(-shear, shear))
    s = base_scale * np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1])))
    tx, ty = rng.uniform(-translate, translate, size=2) * size
    c, si = np.cos(ang), np.sin(ang)
    # output -> source: undo the output-centre offset, rotate + shear, divide by scale
    lin = np.array([[c, -si], [si, c]]) @ np.array([[1.0, np.tan(sh)], [0.0, 1.0]]) / s
    half = (size - 1) / 2.0
    off = np.array([centre[0] + tx, centre[1] + ty]) - lin @ np.array([half, half])
    return np.concatenate([lin, off[:, None]], axis=1).astype(np.float32)


def simulate_clip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | int | None,
                  frames: int = 3, size: int = 384, *, max_objects: int | None = None,
                  rotation: float = 20.0, scale: tuple[float, float] = (0.85, 1.15),
                  shear: float = 10.0, translate: float = 0.08, elastic: float = 0.02,
                  tries: int = 10) -> Clip:
    """Simulate a video clip from one image + mask (STM-style static pre-training).

    Each frame is the image under its own random affine (rotation, scale, shear, translation)
    plus a smooth elastic warp; the mask gets the identical warp with nearest-neighbour
    sampling, so labels and pixels stay aligned (outside the source: black, background). The
    crop is centred near a random object so the first frame shows it; objects absent from the
    first frame are dropped.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8 object ids (0 background).
        rng: numpy Generator or seed.
        frames: clip length T >= 1.
        size: output side (square crop).
        max_objects: keep at most this many objects (random subset), relabelled 1..k.
        rotation/shear: max |angle| in degrees; scale: zoom range; translate: max shift as a
            fraction of `size`; elastic: max elastic displacement as a fraction of `size`.

    Returns:
        Clip(frames (T, size, size, 3) uint8, labels (T, size, size) uint8, num_objects).
    """
    cv2 = _cv2()
    rng = _rng(rng)
    _check_image_mask(image, mask)
    if int(frames) < 1 or int(size) < 8:
        raise InputError(f"frames must be >= 1 and size >= 8, received {frames}, {size}")
    h, w = mask.shape
    base_scale = size / min(h, w)  # source short side fills the crop at scale 1
    ids = _choose_objects(np.unique(mask), rng, max_objects)
    ys, xs = (np.nonzero(np.isin(mask, ids)) if ids else (np.empty(0), np.empty(0)))
    grid_x, grid_y = np.meshgrid(np.arange(size, dtype=np.float32),
                                 np.arange(size, dtype=np.float32))

    def warp(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = _elastic_field(rng, size, size, elastic * size)
        mx = m[0, 0] * grid_x + m[0, 1] * grid_y + m[0, 2] + dx
        my = m[1, 0] * grid_x + m[1, 1] * grid_y + m[1, 2] + dy
        # outside the source: black pixels labelled background (reflecting would duplicate
        # objects under one id, which contradicts instance segmentation)
        img = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=(0, 0, 0))
        lab = cv2.remap(mask, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
        return img, lab

    best = None
    for _ in range(max(1, tries)):
        if xs.size:  # centre near a random object pixel, jittered
            k = int(rng.integers(xs.size))
            centre = (float(xs[k]), float(ys[k]))
        else:
            centre = (rng.uniform(0, w - 1), rng.uniform(0, h - 1))
        m0 = _affine_inverse(rng, size, centre, base_scale, rotation=rotation, scale=scale,
                             shear=shear, translate=translate)
        img0, lab0 = warp(m0)
        present = [i for i in ids if np.count_nonzero(lab0 == i) >= 16]
        if best is None or len(present) > len(best[2]):
            best = (img0, lab0, present, centre)
        if len(present) == len(ids):
            break
    img0, lab0, present, centre = best
    out_f = np.empty((frames, size, size, 3), dtype=np.uint8)
    out_l = np.empty((frames, size, size), dtype=np.uint8)
    out_f[0], out_l[0] = img0, lab0
    for t in range(1, frames):
        m = _affine_inverse(rng, size, centre, base_scale, rotation=rotation, scale=scale,
                            shear=shear, translate=translate)
        out_f[t], out_l[t] = warp(m)
    return Clip(out_f, _relabel(out_l, present), len(present))


def _load_frame(item, index: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, (str, os.PathLike)):
        from mlvos.palette import read_frame

        return read_frame(item)
    raise InputError(f"frame {index} must be a path or (H, W, 3) uint8 array, received "
                     f"{type(item).__name__}")


def _load_mask(item, index: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, (str, os.PathLike)):
        from mlvos.palette import read_mask

        return read_mask(item)
    raise InputError(f"mask {index} must be a path or (H, W) uint8 array, received "
                     f"{type(item).__name__}")


def sample_indices(annotated: Sequence[int], rng: np.random.Generator, num_frames: int,
                   max_skip: int) -> list[int]:
    """Pick `num_frames` positions in increasing order from `annotated` (sorted frame indices).

    Consecutive picks are 1..max(1, max_skip) steps apart in the annotated list. With fewer
    annotated frames than `num_frames`, the last frame repeats.
    """
    n = len(annotated)
    if n == 0:
        raise InputError("cannot sample a clip: the video has no annotated frames")
    if n < num_frames:
        pos = list(range(n)) + [n - 1] * (num_frames - n)
        return [annotated[p] for p in pos]
    skip = max(1, int(max_skip))
    gaps = []
    budget = n - 1
    for k in range(num_frames - 1):
        still = num_frames - 2 - k  # gaps after this one, each >= 1
        hi = min(skip, budget - sum(gaps) - still)
        gaps.append(int(rng.integers(1, hi + 1)))
    start = int(rng.integers(0, n - sum(gaps)))
    pos = np.cumsum([start] + gaps).tolist()
    return [annotated[p] for p in pos]


def _crop_origin(first: np.ndarray, keep: list[int], crop: int, rng: np.random.Generator,
                 tries: int) -> tuple[int, int]:
    """Random crop origin (y, x), preferring crops that contain all of `keep` in `first`."""
    h, w = first.shape
    sel = np.isin(first, keep) if keep else np.zeros_like(first, dtype=bool)
    # integral image: pixel count of kept objects inside any crop in O(1)
    integ = np.pad(sel.cumsum(0, dtype=np.int64).cumsum(1), ((1, 0), (1, 0)))
    total = int(integ[-1, -1])
    best, best_score = (0, 0), -1
    for _ in range(max(1, tries)):
        y = int(rng.integers(0, h - crop + 1))
        x = int(rng.integers(0, w - crop + 1))
        if total == 0:
            return y, x
        score = int(integ[y + crop, x + crop] - integ[y, x + crop] - integ[y + crop, x]
                    + integ[y, x])
        if score > best_score:
            best, best_score = (y, x), score
        if score == total:
            break
    return best


def sample_video_clip(frames: Sequence, masks: Sequence, rng: np.random.Generator | int | None,
                      num_frames: int = 3, max_skip: int = 5, crop: int = 384,
                      max_objects: int | None = 3, *, tries: int = 10) -> Clip:
    """Sample a training clip from a video (STM main training).

    Args:
        frames: N frame paths or (H, W, 3) uint8 arrays, in temporal order.
        masks: N mask paths, (H, W) uint8 id arrays, or None for frames without annotation
            (e.g. YouTube-VOS); only annotated frames are sampled.
        rng: numpy Generator or seed.
        num_frames: T.
        max_skip: consecutive sampled frames are 1..max_skip annotated frames apart (the
            caller grows it for the curriculum).
        crop: output side; frames smaller than `crop` are resized up first (aspect kept).
        max_objects: keep at most this many of the first frame's objects (random subset).

    Returns:
        Clip(frames (T, crop, crop, 3) uint8, labels (T, crop, crop) uint8 ids 1..k, k).
        k == 0 when the first sampled frame has no object inside the crop; resample then.
    """
    cv2 = _cv2()
    rng = _rng(rng)
    if len(frames) != len(masks):
        raise InputError(f"got {len(frames)} frames but {len(masks)} masks; pass one mask entry "
                         "(or None) per frame")
    if int(num_frames) < 1 or int(crop) < 8:
        raise InputError(f"num_frames must be >= 1 and crop >= 8, received {num_frames}, {crop}")
    annotated = [i for i, m in enumerate(masks) if m is not None]
    idx = sample_indices(annotated, rng, int(num_frames), int(max_skip))
    imgs = [_load_frame(frames[i], i) for i in idx]
    labs = [_load_mask(masks[i], i) for i in idx]
    for i, im, lb in zip(idx, imgs, labs, strict=True):
        where = frames[i] if isinstance(frames[i], (str, os.PathLike)) else f"frame {i}"
        try:
            _check_image_mask(im, lb)
        except InputError as e:
            raise DatasetError(f"{where}: {e}") from e
    h, w = labs[0].shape
    if any(lb.shape != (h, w) for lb in labs):
        raise DatasetError(f"frames of one video differ in size: {[lb.shape for lb in labs]}; "
                           "all frames of a video must share one resolution")
    if min(h, w) < crop:  # resize up so a full crop fits
        s = crop / min(h, w)
        nh, nw = max(crop, round(h * s)), max(crop, round(w * s))
        imgs = [cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR) for im in imgs]
        labs = [cv2.resize(lb, (nw, nh), interpolation=cv2.INTER_NEAREST) for lb in labs]
        h, w = nh, nw
    keep = _choose_objects(np.unique(labs[0]), rng, max_objects)
    y, x = _crop_origin(labs[0], keep, crop, rng, tries)
    out_f = np.stack([im[y:y + crop, x:x + crop] for im in imgs])
    out_l = np.stack([lb[y:y + crop, x:x + crop] for lb in labs])
    present = [i for i in keep if np.any(out_l[0] == i)]
    return Clip(np.ascontiguousarray(out_f), _relabel(out_l, present), len(present))


def augment_clip(clip: Clip, rng: np.random.Generator | int | None, *,
                 min_pixels: int = 16) -> Clip:
    """A cheap variation of a training clip (for clip reuse): horizontal flip, time reversal,
    zoom into a random square (x1-1.3) and a brightness/contrast/tint change, each with
    probability 1/2. Objects absent (< `min_pixels`) from the new first frame are dropped and
    the rest relabelled 1..k in order; a zoom or reversal that would leave no object is skipped.

    Returns:
        Clip of the input's shape (T, S, S, 3) uint8 / (T, S, S) uint8 / k >= 1 when the input
        has an object.
    """
    cv2 = _cv2()
    rng = _rng(rng)
    frames, labels = clip.frames, clip.labels
    flip, reverse, zoom, photo = rng.random(4) < 0.5
    if flip:
        frames, labels = frames[:, :, ::-1], labels[:, :, ::-1]
    if reverse and len(frames) > 1 and np.count_nonzero(labels[-1]) >= min_pixels:
        frames, labels = frames[::-1], labels[::-1]
    if zoom:
        h, w = labels.shape[1:]
        f = rng.uniform(1.0, 1.3)
        ch, cw = max(8, round(h / f)), max(8, round(w / f))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        if np.count_nonzero(labels[0, y0:y0 + ch, x0:x0 + cw]) >= min_pixels:
            frames = np.stack([cv2.resize(np.ascontiguousarray(x[y0:y0 + ch, x0:x0 + cw]),
                                          (w, h), interpolation=cv2.INTER_LINEAR)
                               for x in frames])
            labels = np.stack([cv2.resize(np.ascontiguousarray(x[y0:y0 + ch, x0:x0 + cw]),
                                          (w, h), interpolation=cv2.INTER_NEAREST)
                               for x in labels])
    if photo:
        gain = rng.uniform(0.8, 1.2) * (1 + rng.uniform(-0.05, 0.05, 3))
        bias = rng.uniform(-12, 12)
        frames = np.clip(frames.astype(np.float32) * gain.astype(np.float32) + np.float32(bias),
                         0, 255).astype(np.uint8)
    ids, counts = np.unique(labels[0], return_counts=True)
    keep = [int(i) for i, c in zip(ids, counts, strict=True) if i and c >= min_pixels]
    return Clip(np.ascontiguousarray(frames), _relabel(np.ascontiguousarray(labels), keep),
                len(keep))
