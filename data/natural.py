"""Natural-looking video-object-segmentation data from photographs, with exact ground truth.

A `NaturalSequence` composes, frame by frame:

* a **background photograph** seen through a moving camera (pan, zoom, roll and a mild
  perspective tilt, smooth closed-form paths; some sequences keep the camera still);
* **objects**: photographic cut-outs with their own alpha (`PhotoLibrary.objects`), or regions
  of a photograph cut by a random mask (smooth blob, polygon with holes, thin parts, ellipse),
  sized from tiny to large, each moving in world coordinates (so a still object stays put on
  the background while the camera moves) with translation, scale change, roll and a smooth
  non-rigid warp; depths drift so occlusion order changes;
* the hard cases by construction: **look-alike instances** (near copies of one sprite: some are
  targets, some unlabelled distractors), **camouflage** (a target cut out of the background
  photograph itself), **occlusion** (an object whose path crosses a target's, in front of it),
  **exit and re-entry**, **fast motion** (with motion blur), **tiny** objects;
* photometric changes: global illumination and tint drift, a moving soft light, sensor noise
  (JPEG compression is applied when a dataset is written, or by the training source).

There is no colour shortcut: target textures come from the same kind of photographs as the
background (and, for camouflage, from the background itself), many objects' colour statistics
are partly pulled towards the background's, and look-alike distractors carry the targets'
colours into the background label.

Labels are exact: every object is warped once per frame into an alpha map; the frame is painted
back to front by alpha blending and the label map records, per pixel, the frontmost object
whose alpha is above 0.5 (its id, or 0 for a distractor). Motion is a closed-form function of
time, so `render(t)` draws any frame directly (t = 0, 1, ... or any real t >= 0).

This module is the public API (the sequence, the retrying `placed_sequence`, measured
attributes, the dataset writer and training clips). The parts live beside it:
`natural_scene` (NaturalSequence: scene drawing, camera, compositing, photometry),
`natural_objects` (an object's closed-form motion and its warp into a frame) and
`natural_sprites` (random shapes, photo cut-outs, colour statistics).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from mlvos.data.natural_objects import apply_homography
from mlvos.data.natural_scene import ATTRIBUTES, NaturalSequence, as_generator
from mlvos.data.natural_sprites import colour_transfer, random_mask
from mlvos.data.photos import PhotoLibrary
from mlvos.errors import InputError, PlacementError

# the public API, the names re-exported from the part modules included
__all__ = [
    "ATTRIBUTES", "FAST_SPEED", "FORMAT_VERSION", "METADATA", "OCCLUDED_VISIBLE",
    "PLACEMENT_ATTEMPTS", "SMALL_AREA", "THEME_ONLY", "VAL_THEMES", "NaturalSequence",
    "PlacementError", "colour_transfer", "make_natural_dataset", "measure_attributes",
    "natural_clip", "placed_sequence", "random_mask",
]

FORMAT_VERSION = 1
METADATA = "natural.json"
# attribute thresholds (measured on the rendered frames, see measure_attributes)
SMALL_AREA = 0.005       # visible area in frame 0 below this share of the frame
FAST_SPEED = 0.035       # peak centre speed above this share of the frame's longer side / frame
OCCLUDED_VISIBLE = 0.5   # visible / unoccluded area below this while inside the frame

# Draws of a scene before `placed_sequence` gives up: each retry continues the same rng, so
# the result stays deterministic per seed.
PLACEMENT_ATTEMPTS = 20


def placed_sequence(rng, *args, **kwargs) -> NaturalSequence:
    """NaturalSequence(rng, *args, **kwargs), drawing the scene again while no object of it
    is visible (raises the last PlacementError after PLACEMENT_ATTEMPTS draws). `rng` is a
    numpy Generator or a seed."""
    rng = as_generator(rng)
    for attempt in range(PLACEMENT_ATTEMPTS):
        try:
            return NaturalSequence(rng, *args, **kwargs)
        except PlacementError:
            if attempt == PLACEMENT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def measure_attributes(seq: NaturalSequence) -> dict[int, list[str]]:
    """Per-target attributes measured on the rendered sequence (plus those by construction).

    small: visible area in frame 0 < SMALL_AREA of the frame; fast: peak speed of the visible
    centroid > FAST_SPEED of the longer side per frame; occluded: visible / unoccluded area
    < OCCLUDED_VISIBLE in some frame while the object is inside the frame; exit: no pixel inside
    the frame in some frame and back later; distractor / camouflage: by construction.
    """
    attrs = {k: set(v) for k, v in seq.target_attributes().items()}
    n = seq.num_objects
    area = seq.height * seq.width
    gone: dict[int, list[bool]] = {i: [] for i in range(1, n + 1)}
    for t in range(seq.frames):
        _, labels, full = seq._compose(float(t), paint=False)
        counts = np.bincount(labels.ravel(), minlength=n + 1)
        for i in range(1, n + 1):
            a = attrs.setdefault(i, set())
            vis = int(counts[i])
            if t == 0 and vis < SMALL_AREA * area:
                a.add("small")
            f = full.get(i, 0)
            gone[i].append(f == 0)
            if f > 0 and vis < OCCLUDED_VISIBLE * f:
                a.add("occluded")
    long = max(seq.height, seq.width)
    for ob in seq.objects:  # speed of the object's own centre in the frame (not the visible part)
        if not ob.label:
            continue
        prev = None
        for t in range(seq.frames):
            cx, cy = ob.centre(float(t), exit_motion=False)  # exits are their own attribute
            fx, fy = apply_homography(np.linalg.inv(seq.camera(float(t))), np.array(cx),
                                      np.array(cy))
            if prev is not None and np.hypot(fx - prev[0], fy - prev[1]) > FAST_SPEED * long:
                attrs[ob.label].add("fast")
            prev = (fx, fy)
    for i in range(1, n + 1):
        g = gone[i]
        if any(g) and not g[0] and any(not x for x in g[g.index(True):]):
            attrs[i].add("exit")
    return {i: sorted(a & set(ATTRIBUTES)) for i, a in sorted(attrs.items())}


# ----------------------------------------------------------------------------- dataset writer

# Validation sequences cycle through these themes so every attribute occurs several times.
VAL_THEMES: tuple[tuple[str, ...], ...] = (
    ("distractor",), ("camouflage", "small"), ("occluded", "distractor"), ("fast",),
    ("exit", "small"), ("occluded",), ("distractor", "fast"), ("camouflage", "exit"),
)


THEME_ONLY = dict(p_lookalike=0.0, p_camouflage=0.0, p_occlusion=0.0, p_exit=0.0, p_fast=0.0,
                  p_small=0.0)


def make_natural_dataset(out: str | os.PathLike, photos: PhotoLibrary, *, sequences: int,
                         frames: int, seed: int, height: int = 480, width: int = 854,
                         min_objects: int = 1, max_objects: int = 5, split: str = "val",
                         force: bool = False, progress: bool = False) -> Path:
    """Write a DAVIS-2017-layout natural dataset to `out` (as mlvos.data.synth) + natural.json.

    Sequence i uses np.random.default_rng([seed, i]) and exactly the hard cases of theme
    VAL_THEMES[i % 8] (the random ones of training clips are off, so the per-attribute
    breakdown says what each case costs); JPEG quality is drawn per sequence (60-95).
    natural.json records the photo library, every sequence's objects and their measured
    attributes (`mlvos eval` reads it for a per-attribute breakdown). Same arguments and photos
    -> byte-identical files. The defaults are `mlvos data synth --style natural`'s, so that
    `mlvos demo` and `make natural-val` (12 x 40, seed 2027) write the same standard natural
    validation set.
    Built in a temporary folder beside `out` and renamed at the end.
    """
    from tqdm import tqdm

    from mlvos.fileio import atomic_dir
    from mlvos.palette import encode_frame, encode_mask

    for name, v, lo in (("sequences", sequences, 1), ("frames", frames, 2), ("seed", seed, 0)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, received {v!r}")
    if not split or any(c in split for c in "/\\") or split.startswith("."):
        raise InputError(f"split must be a plain name like 'val' or 'train', received {split!r}")
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"output directory {out} already exists; pass --force (force=True) "
                         "to replace it, or choose another path")
    names = [f"natural-{i:04d}" for i in range(sequences)]
    meta = {"format": "mlvos-natural", "version": FORMAT_VERSION, "seed": int(seed),
            "sequences": int(sequences), "frames": int(frames), "height": int(height),
            "width": int(width), "min_objects": int(min_objects),
            "max_objects": int(max_objects), "split": split, "photos": photos.name,
            "attributes": {}, "themes": {}, "jpeg_quality": {}}
    with atomic_dir(out, force=force) as tmp, \
            tqdm(total=sequences * frames, unit="frame", desc="natural",
                 disable=not progress) as bar:
        for i, name in enumerate(names):
            rng = np.random.default_rng([int(seed), i])
            theme = VAL_THEMES[i % len(VAL_THEMES)]
            seq = placed_sequence(rng, frames, height, width, photos, min_objects=min_objects,
                                  max_objects=max_objects, force=theme, **THEME_ONLY)
            quality = int(rng.integers(60, 96))
            jdir = tmp / "JPEGImages" / "480p" / name
            adir = tmp / "Annotations" / "480p" / name
            jdir.mkdir(parents=True)
            adir.mkdir(parents=True)
            for t, (frame, label) in enumerate(seq):
                (jdir / f"{t:05d}.jpg").write_bytes(encode_frame(frame, quality=quality))
                (adir / f"{t:05d}.png").write_bytes(encode_mask(label))
                bar.update(1)
            meta["attributes"][name] = {str(k): v for k, v in measure_attributes(seq).items()}
            meta["themes"][name] = list(theme)
            meta["jpeg_quality"][name] = quality
        sets = tmp / "ImageSets" / "2017"
        sets.mkdir(parents=True)
        (sets / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def natural_clip(rng_or_seed, photos: PhotoLibrary, num_frames: int = 3, size: int = 384,
                 max_skip: int = 5, *, max_objects: int = 3, reference: int = 480,
                 jpeg: float = 0.5, **options):
    """An on-the-fly training clip: frames 0, then steps of 1..max_skip of a fresh sequence
    rendered directly at size x size (objects sized for a `reference`-pixel frame), up to
    `max_objects` targets (the other labelled objects become background), optional JPEG
    round trip (probability `jpeg`, quality 50-95).

    Returns:
        mlvos.data.clips.Clip(frames (T, size, size, 3) uint8, labels (T, size, size), k).
    """
    from mlvos.data.clips import Clip, _choose_objects, _relabel

    rng = as_generator(rng_or_seed)
    seq = placed_sequence(rng, max(5, num_frames * max(1, max_skip)), size, size, photos,
                          reference=reference, max_objects=max(max_objects, 1) + 1, **options)
    steps = rng.integers(1, max(1, max_skip) + 1, size=num_frames - 1)
    times = np.concatenate([[0], np.cumsum(steps)]).astype(float)
    pairs = [seq.render(t) for t in times]
    frames = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs])
    if rng.random() < jpeg:
        q = int(rng.integers(50, 96))
        for i in range(len(frames)):
            ok, buf = cv2.imencode(".jpg", frames[i][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
            frames[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    keep = _choose_objects(np.unique(labels[0]), rng, max_objects)
    return Clip(frames, _relabel(labels, keep), len(keep))
