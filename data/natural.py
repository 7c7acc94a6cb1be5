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
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mlvos.data.photos import PhotoLibrary
from mlvos.errors import InputError

FORMAT_VERSION = 1
METADATA = "natural.json"
ATTRIBUTES = ("small", "fast", "occluded", "distractor", "camouflage", "exit")
# attribute thresholds (measured on the rendered frames, see _measure)
SMALL_AREA = 0.005       # visible area in frame 0 below this share of the frame
FAST_SPEED = 0.035       # peak centre speed above this share of the frame's longer side / frame
OCCLUDED_VISIBLE = 0.5   # visible / unoccluded area below this while inside the frame


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth value noise (h, w) float32 in [0, 1] with about `cells` features per short side."""
    short = min(h, w)
    gh, gw = max(2, round(cells * h / short) + 1), max(2, round(cells * w / short) + 1)
    f = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(f.min()), float(f.max())
    return (f - lo) / max(hi - lo, 1e-6)


# ----------------------------------------------------------------------------- sprite masks


def random_mask(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> np.ndarray:
    """A random object shape (h, w) float32 alpha in {0, 1}: one connected piece.

    kind: "blob" (smooth noise blob), "polygon", "holes" (polygon with holes), "thin" (blob with
    thin limbs), "ellipse"; None draws one.
    """
    kinds = ("blob", "polygon", "holes", "thin", "ellipse")
    kind = kind or kinds[int(rng.integers(len(kinds)))]
    a = np.zeros((h, w), np.uint8)
    cx, cy, rx, ry = (w - 1) / 2, (h - 1) / 2, 0.46 * w, 0.46 * h
    if kind in ("blob", "thin"):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot((xx - cx) / rx, (yy - cy) / ry)
        f = (1.0 - r) + 0.7 * (_noise(rng, h, w, rng.uniform(2, 5)) - 0.5)
        a = ((f > 0.25) & (r < 1.0)).astype(np.uint8)
        if kind == "thin":  # limbs: thin strokes from the centre outwards
            body = a.copy()
            a = (cv2.erode(a, np.ones((3, 3), np.uint8), iterations=max(1, min(h, w) // 12))
                 if a.sum() > 0.3 * h * w else a)
            for _ in range(int(rng.integers(2, 6))):
                ang = rng.uniform(0, 2 * np.pi)
                length = rng.uniform(0.6, 1.0)
                p1 = (round(cx + length * rx * np.cos(ang)), round(cy + length * ry * np.sin(ang)))
                thick = max(1, int(rng.uniform(0.02, 0.06) * min(h, w)))
                cv2.line(a, (round(cx), round(cy)), p1, 1, thick, cv2.LINE_8)
            a = np.maximum(a, cv2.erode(body, np.ones((3, 3), np.uint8),
                                        iterations=max(1, min(h, w) // 6)))
    elif kind in ("polygon", "holes"):
        k = int(rng.integers(4, 12))
        ang = np.sort(np.arange(k) * 2 * np.pi / k + rng.uniform(-0.45, 0.45, k) * np.pi / k)
        rad = rng.uniform(0.45, 1.0, k)
        pts = np.stack([cx + rad * rx * np.cos(ang), cy + rad * ry * np.sin(ang)], 1)
        cv2.fillPoly(a, [np.round(pts).astype(np.int32)], 1)
        if kind == "holes":
            for _ in range(int(rng.integers(1, 4))):
                hx = cx + rng.uniform(-0.35, 0.35) * rx
                hy = cy + rng.uniform(-0.35, 0.35) * ry
                axes = (max(1, int(rng.uniform(0.06, 0.18) * w)),
                        max(1, int(rng.uniform(0.06, 0.18) * h)))
                cv2.ellipse(a, (round(hx), round(hy)), axes, rng.uniform(0, 180), 0, 360, 0, -1)
    else:
        axes = (max(2, int(rx * rng.uniform(0.55, 1.0))), max(2, int(ry * rng.uniform(0.55, 1))))
        cv2.ellipse(a, (round(cx), round(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(a, connectivity=8)
    if n > 2:  # one object = one connected piece
        a = (lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    if a.sum() < 0.05 * h * w:
        a[:] = 0
        cv2.ellipse(a, (round(cx), round(cy)), (max(2, int(0.7 * rx)), max(2, int(0.7 * ry))),
                    0, 0, 360, 1, -1)
    return a.astype(np.float32)


def _lab_stats(rgb: np.ndarray, weight: np.ndarray | None = None):
    """(Lab image, Lab mean (3,), Lab std (3,) + 1e-3) over the pixels where weight > 0.5."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    mask = None if weight is None else (weight > 0.5).astype(np.uint8)
    if mask is not None and int(cv2.countNonZero(mask)) < 4:
        mask = None
    # one C pass (numpy's mean + std took a third of a training clip's rendering time)
    mu, sd = cv2.meanStdDev(lab, mask=mask)
    return lab, mu.ravel().astype(np.float32), sd.ravel().astype(np.float32) + 1e-3


def colour_transfer(rgb: np.ndarray, alpha: np.ndarray, target: tuple[np.ndarray, np.ndarray],
                    strength: float) -> np.ndarray:
    """Pull a sprite's Lab mean/std towards `target` = (Lab mean, Lab std) by `strength` in
    [0, 1] (Reinhard's colour transfer)."""
    if strength <= 0:
        return rgb
    lab, mu, sd = _lab_stats(rgb, alpha)
    mu_t, sd_t = target
    mu_n = mu + strength * (mu_t - mu)
    sd_n = sd * (1 - strength) + sd_t * strength
    out = (lab - mu) * (sd_n / sd) + mu_n
    out = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB) * 255.0
    return np.clip(out, 0, 255).astype(np.float32)


# ------------------------------------------------------------------------------- the objects


@dataclass(eq=False)
class _Object:
    """One object: an RGBA sprite and closed-form motion in world (photo) coordinates."""

    sprite: np.ndarray           # (s, s', 4) float32, RGB in [0, 255], alpha in [0, 1]
    label: int                   # 1.. for targets, 0 for distractors
    c0: np.ndarray               # world centre at t = 0
    scale0: float                # world px per sprite px at t = 0
    attrs: set = field(default_factory=set)
    group: int = -1              # look-alike group (copies of one sprite), -1 = none
    kind: str = "cutout"
    # motion parameters (set by NaturalSequence)
    vel: np.ndarray = field(default_factory=lambda: np.zeros(2))
    amp: np.ndarray = field(default_factory=lambda: np.zeros(2))
    w: np.ndarray = field(default_factory=lambda: np.ones(2))
    p: np.ndarray = field(default_factory=lambda: np.zeros(2))
    s_amp: float = 0.0
    s_w: float = 0.1
    s_p: float = 0.0
    r0: float = 0.0
    r_speed: float = 0.0
    r_amp: float = 0.0
    r_w: float = 0.1
    z0: float = 0.0
    z_amp: float = 0.0
    z_w: float = 0.1
    z_p: float = 0.0
    exit_vec: np.ndarray | None = None
    exit_period: float = 1.0
    fields: tuple = ()
    el_w: np.ndarray = field(default_factory=lambda: np.ones(2))
    el_p: np.ndarray = field(default_factory=lambda: np.zeros(2))
    blur: float = 0.0            # motion blur (share of the per-frame displacement)

    def centre(self, t: float, exit_motion: bool = True) -> np.ndarray:
        c = self.c0 + self.vel * t + self.amp * (np.sin(self.w * t + self.p) - np.sin(self.p))
        if self.exit_vec is not None and exit_motion:
            u = 1.5 * (1.0 - np.cos(2 * np.pi * t / self.exit_period)) / 2.0
            c = c + self.exit_vec * min(1.0, u)
        return c

    def scale(self, t: float) -> float:
        return self.scale0 * float(np.exp(self.s_amp * (np.sin(self.s_w * t + self.s_p)
                                                        - np.sin(self.s_p))))

    def angle(self, t: float) -> float:
        return self.r0 + self.r_speed * t + self.r_amp * np.sin(self.r_w * t)

    def depth(self, t: float) -> float:
        return self.z0 + self.z_amp * np.sin(self.z_w * t + self.z_p)

    def to_world(self, t: float) -> np.ndarray:
        """3x3 sprite pixel -> world coordinates at time t."""
        h, w = self.sprite.shape[:2]
        s, a = self.scale(t), self.angle(t)
        c, si = np.cos(a) * s, np.sin(a) * s
        cx, cy = self.centre(t)
        half_x, half_y = (w - 1) / 2, (h - 1) / 2
        return np.array([[c, -si, cx - c * half_x + si * half_y],
                         [si, c, cy - si * half_x - c * half_y],
                         [0, 0, 1]])


def _apply(m: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / d, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / d


class PlacementError(InputError):
    """No object of a drawn scene stays visible in the frame (a rare draw at small sizes)."""


# Draws of a scene before `placed_sequence` gives up: each retry continues the same rng, so
# the result stays deterministic per seed.
PLACEMENT_ATTEMPTS = 20


def placed_sequence(rng, *args, **kwargs) -> NaturalSequence:
    """NaturalSequence(rng, *args, **kwargs), drawing the scene again while no object of it
    is visible (raises the last PlacementError after PLACEMENT_ATTEMPTS draws). `rng` is a
    numpy Generator or a seed."""
    rng = _rng(rng)
    for attempt in range(PLACEMENT_ATTEMPTS):
        try:
            return NaturalSequence(rng, *args, **kwargs)
        except PlacementError:
            if attempt == PLACEMENT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class NaturalSequence:
    """One natural-looking sequence; `render(t)` draws frame t.

    Args:
        rng_or_seed: numpy Generator or seed; all randomness comes from it (deterministic for
            a given library).
        frames: nominal length F (exit/re-entry and occlusions are timed on it).
        height, width: frame size (>= 32).
        photos: a PhotoLibrary (backgrounds and cut-outs).
        num_objects: exact number of targets, or None to draw from [min_objects, max_objects].
        distractors: (min, max) number of unlabelled distractor objects.
        reference: the frame size objects are sized for (short side, pixels); None = the short
            side of this frame. Training renders small crops of a virtual larger frame with it.
        camera: probability that the camera moves (else it is still, as a fixed camera).
        force: attributes that must occur (subset of ATTRIBUTES); others occur at random
            with the probabilities below.
        p_lookalike, p_camouflage, p_occlusion, p_exit, p_fast, p_small: per-sequence
            probabilities of each hard case (ignored for attributes in `force`).
        noise: sensor noise sigma range; illumination: global light drift on/off.
    """

    def __init__(self, rng_or_seed, frames: int, height: int, width: int, photos: PhotoLibrary,
                 num_objects: int | None = None, *, min_objects: int = 1, max_objects: int = 4,
                 distractors: tuple[int, int] = (0, 3), reference: int | None = None,
                 camera: float = 0.7, force: tuple[str, ...] = (), p_lookalike: float = 0.5,
                 p_camouflage: float = 0.2, p_occlusion: float = 0.35, p_exit: float = 0.2,
                 p_fast: float = 0.15, p_small: float = 0.25,
                 noise: tuple[float, float] = (0.5, 4.0), illumination: bool = True):
        for name, v, lo in (("frames", frames, 1), ("height", height, 32), ("width", width, 32)):
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, received {v!r}")
        if not 1 <= min_objects <= max_objects <= 255:
            raise InputError(f"need 1 <= min_objects <= max_objects <= 255, received "
                             f"{min_objects}, {max_objects}")
        unknown = set(force) - set(ATTRIBUTES)
        if unknown:
            raise InputError(f"unknown attributes {sorted(unknown)}; known: {ATTRIBUTES}")
        if not isinstance(photos, PhotoLibrary):
            raise InputError(f"photos must be a PhotoLibrary, received {type(photos).__name__}")
        rng = _rng(rng_or_seed)
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.ref = float(reference or min(height, width))
        ref_long = self.ref * max(height, width) / min(height, width)
        self.photos = photos
        want = set(force)

        def happens(attr: str, prob: float) -> bool:
            return attr in want or rng.random() < prob

        # ---- camera: frame pixel -> world (background photo) homography, closed form in t
        bg = photos.backgrounds[int(rng.integers(len(photos.backgrounds)))]
        if rng.random() < 0.5:
            bg = bg[:, ::-1]
        self.background = np.ascontiguousarray(bg).astype(np.float32)
        ph, pw = bg.shape[:2]
        # world px per frame px: a frame of the reference size covers 45-85 % of the photo's
        # fitting extent (a training crop is a window of such a frame, so photo textures keep
        # the scale they have in full validation frames)
        vh, vw = (height, width) if reference is None else \
            (self.ref, self.ref * max(width / height, 854 / 480))
        self.zoom = min(ph / vh, pw / vw) * rng.uniform(0.45, 0.85)
        moving = rng.random() < camera
        room = np.array([pw - width * self.zoom, ph - height * self.zoom]) / 2  # >= 0
        self.cam_c0 = np.array([pw / 2, ph / 2]) + rng.uniform(-0.5, 0.5, 2) * room
        span = max(1.0, frames - 1)
        self.cam_v = (rng.uniform(-0.45, 0.45, 2) * room / span) if moving else np.zeros(2)
        self.cam_amp = (rng.uniform(0, 0.25, 2) * room) if moving else np.zeros(2)
        self.cam_w = 2 * np.pi / rng.uniform(40, 120, 2)
        self.cam_p = rng.uniform(0, 2 * np.pi, 2)
        self.zoom_amp = rng.uniform(0, 0.15) if moving else 0.0
        self.zoom_w, self.zoom_p = 2 * np.pi / rng.uniform(30, 100), rng.uniform(0, 2 * np.pi)
        self.roll_amp = np.deg2rad(rng.uniform(0, 4)) if moving else 0.0
        self.roll_w, self.roll_p = 2 * np.pi / rng.uniform(30, 100), rng.uniform(0, 2 * np.pi)
        self.tilt = rng.uniform(-1, 1, 2) * (0.25 / max(height, width)) if moving else np.zeros(2)
        self.tilt_w = 2 * np.pi / rng.uniform(30, 100)

        # ---- objects
        k = int(num_objects) if num_objects is not None else \
            int(rng.integers(min_objects, max_objects + 1))
        if "small" in want and k == 1 and max_objects > 1:
            k = 2  # a small target beside a normal one
        n_distract = int(rng.integers(distractors[0], distractors[1] + 1))
        self.objects: list[_Object] = []
        fast_ids = set(int(i) for i in np.nonzero(rng.random(k) < p_fast)[0])
        if "fast" in want and not fast_ids:
            fast_ids = {int(rng.integers(k))}
        small_ids = {int(rng.integers(k))} if happens("small", p_small) else set()
        camo_id = int(rng.integers(k)) if happens("camouflage", p_camouflage) else -1
        for i in range(k):
            kind = "camouflage" if i == camo_id else None
            ob = self._make_object(rng, label=i + 1, kind=kind, small=i in small_ids,
                                   fast=i in fast_ids, ref_long=ref_long)
            self.objects.append(ob)
        # look-alikes: near copies of one target, as distractors or as other targets
        group = 0
        if happens("distractor", p_lookalike):
            normal = [i for i in range(k) if i not in small_ids] or list(range(k))
            src = self.objects[normal[int(rng.integers(len(normal)))]]
            src.group = group
            copies = int(rng.integers(1, 4))
            for _ in range(copies):
                self.objects.append(self._copy_object(rng, src, label=0, ref_long=ref_long))
            plain = [o for o in self.objects if o.label not in (0, src.label) and not o.attrs]
            if plain and rng.random() < 0.4:  # two targets that look alike too
                other = plain[0]
                twin = self._copy_object(rng, src, label=other.label, ref_long=ref_long)
                self.objects[self.objects.index(other)] = twin
            group += 1
        for _ in range(n_distract):
            self.objects.append(self._make_object(rng, label=0, kind=None,
                                                  small=rng.random() < 0.2, fast=False,
                                                  ref_long=ref_long))
        # depth: a random order, drifting so neighbours swap
        for z, ob in zip(rng.permutation(len(self.objects)), self.objects, strict=True):
            ob.z0 = float(z)
        self._place(rng, ref_long)
        if happens("occluded", p_occlusion):
            self._add_occluder(rng, ref_long)
        if happens("exit", p_exit) and frames >= 5:
            self._add_exit(rng)

        # ---- photometric drift
        self.illumination = illumination
        self.gain_amp = rng.uniform(0.05, 0.3)
        self.tint_amp = rng.uniform(0.0, 0.06, 3)
        self.ill_w = 2 * np.pi / rng.uniform(25, 100, 4)
        self.ill_p = rng.uniform(0, 2 * np.pi, 4)
        self.light = rng.random() < 0.4  # a moving soft light / shadow
        self.light_c = rng.uniform(0, 1, 2)
        self.light_v = rng.uniform(-0.01, 0.01, 2)
        self.light_r = rng.uniform(0.2, 0.6)
        self.light_g = rng.uniform(-0.35, 0.3)
        self.noise_sigma = float(rng.uniform(*noise)) if noise[1] > 0 else 0.0
        self._noise_seed = int(rng.integers(2**63))

    # ------------------------------------------------------------------------- construction
    def _background_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Lab mean and std of the background photo (computed once: it is the costliest part
        of building a training clip)."""
        if getattr(self, "_bg_stats", None) is None:
            self._bg_stats = _lab_stats(self.background)[1:]
        return self._bg_stats

    def _sprite_size(self, rng, small: bool) -> float:
        """Longer sprite side in frame pixels (log-uniform, relative to the reference side)."""
        lo, hi = (0.05, 0.09) if small else (0.25, 0.85)
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * self.ref

    def _cutout(self, rng, photo: np.ndarray, side: int, aspect: float, mask_kind=None):
        ph, pw = photo.shape[:2]
        h = max(8, int(side * min(1.0, aspect)))
        w = max(8, int(side * min(1.0, 1 / aspect)))
        # texture: a window of the photo, resized to the sprite
        cw = int(min(pw, ph) * rng.uniform(0.15, 0.6))
        ch = max(4, int(cw * h / w))
        cw, ch = min(cw, pw), min(ch, ph)
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        tex = cv2.resize(np.ascontiguousarray(photo[y0:y0 + ch, x0:x0 + cw]), (w, h),
                         interpolation=cv2.INTER_AREA).astype(np.float32)
        alpha = random_mask(rng, h, w, mask_kind)
        alpha = cv2.GaussianBlur(alpha, (3, 3), 0.7)  # anti-aliased edge
        return np.dstack([tex, alpha])

    def _make_object(self, rng, *, label: int, kind: str | None, small: bool, fast: bool,
                     ref_long: float) -> _Object:
        side = self._sprite_size(rng, small)
        lib = self.photos
        attrs = set()
        if kind == "camouflage":
            sprite = self._cutout(rng, self.background, 192, rng.uniform(0.6, 1.6))
            attrs.add("camouflage")
        elif lib.objects and rng.random() < 0.65:
            kind = "stamp"
            src = lib.objects[int(rng.integers(len(lib.objects)))]
            sprite = src.astype(np.float32)
            sprite[..., 3] /= 255.0
            if rng.random() < 0.5:
                sprite = sprite[:, ::-1]
            long = max(sprite.shape[:2])
            if long > 256:  # keep sprites small: they are resampled every frame
                f = 256 / long
                sprite = cv2.resize(np.ascontiguousarray(sprite),
                                    (max(2, round(sprite.shape[1] * f)),
                                     max(2, round(sprite.shape[0] * f))),
                                    interpolation=cv2.INTER_AREA)
        else:
            kind = "cutout"
            photo = lib.backgrounds[int(rng.integers(len(lib.backgrounds)))]
            sprite = self._cutout(rng, photo, 192, rng.uniform(0.5, 2.0))
        sprite = np.ascontiguousarray(sprite, dtype=np.float32)
        if kind != "camouflage":
            # overlap colour statistics with the background (no colour shortcut) and jitter
            if rng.random() < 0.5:
                sprite[..., :3] = colour_transfer(sprite[..., :3], sprite[..., 3],
                                                  self._background_stats(),
                                                  rng.uniform(0.2, 0.7))
            gain = rng.uniform(0.75, 1.2) * (1 + rng.uniform(-0.08, 0.08, 3))
            sprite[..., :3] = np.clip(sprite[..., :3] * gain.astype(np.float32), 0, 255)
        ob = _Object(sprite=sprite, label=label, c0=np.zeros(2),
                     scale0=side / max(sprite.shape[:2]) * self.zoom, attrs=attrs, kind=kind)
        self._motion(rng, ob, fast=fast, ref_long=ref_long)
        return ob

    def _copy_object(self, rng, src: _Object, *, label: int, ref_long: float) -> _Object:
        sprite = src.sprite.copy()
        if rng.random() < 0.5:
            sprite = np.ascontiguousarray(sprite[:, ::-1])
        gain = rng.uniform(0.9, 1.1) * (1 + rng.uniform(-0.04, 0.04, 3))
        sprite[..., :3] = np.clip(sprite[..., :3] * gain.astype(np.float32), 0, 255)
        ob = _Object(sprite=sprite, label=label, c0=np.zeros(2),
                     scale0=src.scale0 * rng.uniform(0.85, 1.15), group=src.group,
                     kind=src.kind, attrs=set(src.attrs) & {"camouflage"})
        self._motion(rng, ob, fast=False, ref_long=ref_long)
        return ob

    def _motion(self, rng, ob: _Object, *, fast: bool, ref_long: float) -> None:
        z = self.zoom
        span = max(1.0, self.frames - 1)
        still = rng.random() < 0.15 and not fast  # parked cars, furniture
        if fast:
            # back and forth across a good part of the frame, peak speed 4-8 % of the long side
            speed = rng.uniform(0.04, 0.08) * ref_long * z
            period = rng.uniform(10, 24)
            ob.w = np.full(2, 2 * np.pi / period)
            direction = rng.normal(size=2)
            direction /= np.linalg.norm(direction) + 1e-9
            ob.amp = direction * speed / ob.w[0]
            ob.p = np.full(2, rng.uniform(0, 2 * np.pi))
            ob.blur = rng.uniform(0.3, 0.8)
            ob.attrs.add("fast")
        elif not still:
            ob.vel = rng.uniform(-1, 1, 2) * rng.uniform(0.0, 0.35) * ref_long * z / span
            ob.w = 2 * np.pi / rng.uniform(25, 100, 2)
            ob.amp = rng.uniform(0.002, 0.012, 2) * ref_long * z / ob.w
            ob.p = rng.uniform(0, 2 * np.pi, 2)
        ob.s_amp = 0.0 if still else rng.uniform(0.0, 0.25)
        ob.s_w, ob.s_p = 2 * np.pi / rng.uniform(25, 90), rng.uniform(0, 2 * np.pi)
        ob.r0 = rng.normal(0, 0.25) if ob.kind == "stamp" else rng.uniform(0, 2 * np.pi)
        ob.r_speed = 0.0 if still else np.deg2rad(rng.uniform(-1.5, 1.5))
        ob.r_amp = 0.0 if still else rng.uniform(0.0, 0.2)
        ob.r_w = 2 * np.pi / rng.uniform(20, 80)
        ob.z_amp = rng.uniform(0.0, 1.2)
        ob.z_w, ob.z_p = 2 * np.pi / rng.uniform(25, 90), rng.uniform(0, 2 * np.pi)
        h, w = ob.sprite.shape[:2]
        amp = 0.0 if still else rng.uniform(0.0, 0.06) * max(h, w)
        fields = []
        for _ in range(2):
            coarse = rng.uniform(-1, 1, size=(4, 4, 2)).astype(np.float32)
            fields.append(np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC),
                                  -1, 1) * np.float32(amp))
        ob.fields = tuple(fields)
        ob.el_w = 2 * np.pi / rng.uniform(12, 40, 2)
        ob.el_p = rng.uniform(0, 2 * np.pi, 2)

    def _place(self, rng, ref_long: float) -> None:
        """Start positions: every target clearly visible in frame 0 (redrawn until so)."""
        to_world = self.camera(0.0)
        for attempt in range(40):
            for ob in self.objects:
                fx, fy = rng.uniform(0.12, 0.88) * self.width, rng.uniform(0.12, 0.88) * self.height
                wx, wy = _apply(to_world, np.array(fx), np.array(fy))
                ob.c0 = np.array([float(wx), float(wy)])
            if self._visible_ok(0.0):
                return
            if attempt % 8 == 7:
                for ob in self.objects:
                    ob.scale0 *= 0.85
        # crowded tiny frames: keep going with what is visible (targets relabelled below)
        self._drop_invisible()

    def _visible_ok(self, t: float) -> bool:
        _, labels, full = self._compose(t, paint=False)
        counts = np.bincount(labels.ravel(), minlength=256)
        for ob in self.objects:
            if ob.label and (full.get(ob.label, 0) < 16 or
                             counts[ob.label] < max(12, 0.4 * full[ob.label])):
                return False
        return True

    def _drop_invisible(self) -> None:
        _, labels, _ = self._compose(0.0, paint=False)
        present = set(np.unique(labels).tolist()) - {0}
        if not present:
            raise PlacementError(f"cannot place any object visibly in a {self.width}x"
                                 f"{self.height} frame; use a larger size")
        keep = sorted(present)
        remap = {old: new for new, old in enumerate(keep, 1)}
        for ob in self.objects:
            ob.label = remap.get(ob.label, 0)

    def _add_occluder(self, rng, ref_long: float) -> None:
        """An object (new distractor or another target) that passes in front of a target."""
        targets = [o for o in self.objects if o.label]
        victim = targets[int(rng.integers(len(targets)))]
        t_mid = rng.uniform(0.3, 0.7) * max(1, self.frames - 1)
        occ = self._make_object(rng, label=0, kind=None, small=False, fast=False,
                                ref_long=ref_long)
        vs = victim.scale(t_mid) * max(victim.sprite.shape[:2])
        occ.scale0 = max(occ.scale0, 1.1 * vs / max(occ.sprite.shape[:2]))
        # straight crossing: at t_mid the occluder's centre is on the victim's centre
        speed = rng.uniform(0.006, 0.02) * ref_long * self.zoom
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-9
        occ.vel, occ.amp = direction * speed, np.zeros(2)
        occ.c0 = victim.centre(t_mid) - occ.vel * t_mid
        occ.z0, occ.z_amp = max(o.z0 + o.z_amp for o in self.objects) + 2.0, 0.0
        victim.z_amp = min(victim.z_amp, 0.4)
        self.objects.append(occ)
        victim.attrs.add("occluded_by_design")

    def _add_exit(self, rng) -> None:
        """A target that leaves the frame around mid-sequence and comes back (in front)."""
        targets = [o for o in self.objects if o.label and "fast" not in o.attrs] or \
            [o for o in self.objects if o.label]
        ob = targets[int(rng.integers(len(targets)))]
        ob.vel = np.zeros(2)  # no drift: it must come back into view
        ob.amp = np.minimum(np.abs(ob.amp), 0.03 * self.ref * self.zoom) * np.sign(ob.amp)
        to_frame = np.linalg.inv(self.camera(0.0))
        fx, fy = _apply(to_frame, np.array(ob.c0[0]), np.array(ob.c0[1]))
        dists = {(-1, 0): float(fx), (1, 0): self.width - float(fx), (0, -1): float(fy),
                 (0, 1): self.height - float(fy)}
        direction = min(dists, key=dists.get)
        radius = ob.scale0 * 1.4 * max(ob.sprite.shape[:2]) / self.zoom
        reach = (dists[direction] + radius + 8.0 + float(np.abs(ob.amp).max()) / self.zoom
                 + float(np.abs(ob.vel).max()) * self.frames / self.zoom) * self.zoom
        ob.exit_vec = np.array(direction, dtype=np.float64) * reach
        ob.exit_period = float(self.frames - 1)
        ob.z0 = max(o.z0 + o.z_amp for o in self.objects) + 1.0
        ob.z_amp = 0.0

    # ------------------------------------------------------------------------------ camera
    def camera(self, t: float) -> np.ndarray:
        """3x3 frame pixel -> world (background photo) coordinates at time t."""
        c = self.cam_c0 + self.cam_v * t + self.cam_amp * (np.sin(self.cam_w * t + self.cam_p)
                                                           - np.sin(self.cam_p))
        s = self.zoom * np.exp(self.zoom_amp * (np.sin(self.zoom_w * t + self.zoom_p)
                                                - np.sin(self.zoom_p)))
        r = self.roll_amp * np.sin(self.roll_w * t + self.roll_p)
        tilt = self.tilt * np.sin(self.tilt_w * t)
        fc = np.array([[1, 0, -(self.width - 1) / 2], [0, 1, -(self.height - 1) / 2], [0, 0, 1]])
        persp = np.array([[1, 0, 0], [0, 1, 0], [tilt[0], tilt[1], 1]])
        cr, sr = np.cos(r) * s, np.sin(r) * s
        rot = np.array([[cr, -sr, c[0]], [sr, cr, c[1]], [0, 0, 1]])
        return rot @ persp @ fc

    # ----------------------------------------------------------------------------- drawing
    def _warp(self, ob: _Object, t: float, frame_to_world: np.ndarray, paint: bool = True):
        """(y0, x0, rgb (h, w, 3), alpha (h, w)) of one object over its clipped bbox, or None."""
        sh, sw = ob.sprite.shape[:2]
        to_world = ob.to_world(t)
        world_to_frame = np.linalg.inv(frame_to_world)
        m = world_to_frame @ to_world  # sprite -> frame
        pad = float(np.abs(ob.fields[0]).max() + np.abs(ob.fields[1]).max()) if ob.fields else 0
        cx = np.array([-pad, sw - 1 + pad, sw - 1 + pad, -pad])
        cy = np.array([-pad, -pad, sh - 1 + pad, sh - 1 + pad])
        fx, fy = _apply(m, cx, cy)
        x0, x1 = max(0, int(np.floor(fx.min())) - 1), min(self.width, int(np.ceil(fx.max())) + 2)
        y0, y1 = max(0, int(np.floor(fy.min())) - 1), min(self.height, int(np.ceil(fy.max())) + 2)
        if x0 >= x1 or y0 >= y1:
            return None
        inv = np.linalg.inv(m)
        xs = np.arange(x0, x1, dtype=np.float64)[None, :]
        ys = np.arange(y0, y1, dtype=np.float64)[:, None]
        mx, my = _apply(inv, xs + 0 * ys, ys + 0 * xs)
        mx, my = mx.astype(np.float32), my.astype(np.float32)
        if ob.fields:
            wts = np.sin(ob.el_w * t + ob.el_p)
            f = ob.fields[0] * np.float32(wts[0]) + ob.fields[1] * np.float32(wts[1])
            disp = cv2.remap(f, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            mx += disp[..., 0]
            my += disp[..., 1]
        out = cv2.remap(ob.sprite, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0)
        alpha = out[..., 3]
        if not (alpha > 0.5).any():
            return None
        rgb = out[..., :3]
        if ob.blur > 0 and paint:  # motion blur of the texture along the object's frame motion
            d = np.array(_apply(m, np.array(sw / 2), np.array(sh / 2))).ravel()
            m2 = world_to_frame @ ob.to_world(t + 0.5)
            d2 = np.array(_apply(m2, np.array(sw / 2), np.array(sh / 2))).ravel()
            length = float(np.hypot(*(d2 - d))) * 2 * ob.blur
            if length >= 2:
                k = int(min(31, length)) | 1
                ker = np.zeros((k, k), np.float32)
                ang = np.arctan2(d2[1] - d[1], d2[0] - d[0])
                c = k // 2
                cv2.line(ker, (round(c - c * np.cos(ang)), round(c - c * np.sin(ang))),
                         (round(c + c * np.cos(ang)), round(c + c * np.sin(ang))), 1.0, 1)
                ker /= ker.sum()
                prem = cv2.filter2D(rgb * alpha[..., None], -1, ker)
                asoft = cv2.filter2D(alpha, -1, ker)
                rgb = np.where(asoft[..., None] > 1e-3, prem / np.maximum(asoft, 1e-3)[..., None],
                               rgb)
        return y0, x0, rgb, alpha

    def _compose(self, t: float, paint: bool = True):
        """(image float32 or None, labels uint8, unoccluded target areas {label: px})."""
        h, w = self.height, self.width
        cam = self.camera(t)
        labels = np.zeros((h, w), np.uint8)
        front = np.zeros((h, w), bool)  # any object's alpha > 0.5 already painted in front
        img = None
        if paint:
            img = cv2.warpPerspective(self.background, cam, (w, h),
                                      flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_REFLECT_101)
        full: dict[int, int] = {}
        order = sorted(range(len(self.objects)), key=lambda i: (self.objects[i].depth(t), i))
        for i in order:  # back to front
            ob = self.objects[i]
            warped = self._warp(ob, t, cam, paint)
            if warped is None:
                continue
            y0, x0, rgb, alpha = warped
            mh, mw = alpha.shape
            solid = alpha > 0.5
            if ob.label:
                full[ob.label] = full.get(ob.label, 0) + int(solid.sum())
            region = labels[y0:y0 + mh, x0:x0 + mw]
            region[solid] = ob.label
            front[y0:y0 + mh, x0:x0 + mw] |= solid
            if paint:
                dst = img[y0:y0 + mh, x0:x0 + mw]
                a = alpha[..., None]
                dst *= 1.0 - a
                dst += rgb * a
        return img, labels, full

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Frame t -> (frame (H, W, 3) uint8 RGB, labels (H, W) uint8: target ids, 0 = rest)."""
        img, labels, _ = self._compose(t)
        if self.illumination:
            s = np.sin(self.ill_w * t + self.ill_p)
            gain = (1.0 + self.gain_amp * s[0]) * (1.0 + self.tint_amp * s[1:])
            img *= gain.astype(np.float32)
        if self.light:
            h, w = self.height, self.width
            c = (self.light_c + self.light_v * t) * np.array([w, h])
            yy, xx = np.ogrid[0:h, 0:w]
            r2 = ((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (self.light_r * max(h, w)) ** 2
            img *= (1.0 + self.light_g * np.exp(-r2)).astype(np.float32)[..., None]
        if self.noise_sigma > 0:
            rng = np.random.default_rng([self._noise_seed, int(round(t * 1000))])
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise_sigma)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8), labels

    @property
    def num_objects(self) -> int:
        """Number of targets (label ids 1..num_objects)."""
        return max((o.label for o in self.objects), default=0)

    def target_attributes(self) -> dict[int, set[str]]:
        """Attributes given by construction (camouflage, fast, look-alike group)."""
        out: dict[int, set[str]] = {}
        groups = {}
        for o in self.objects:
            if o.group >= 0:
                groups.setdefault(o.group, []).append(o)
        for o in self.objects:
            if not o.label:
                continue
            a = out.setdefault(o.label, set())
            a |= {x for x in o.attrs if x in ("camouflage", "fast")}
            if o.group >= 0 and len(groups.get(o.group, [])) > 1:
                a.add("distractor")
        return out

    def __len__(self) -> int:
        return self.frames

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for t in range(self.frames):
            yield self.render(float(t))


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
            fx, fy = _apply(np.linalg.inv(seq.camera(float(t))), np.array(cx), np.array(cy))
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
                         min_objects: int = 1, max_objects: int = 4, split: str = "val",
                         force: bool = False, progress: bool = False) -> Path:
    """Write a DAVIS-2017-layout natural dataset to `out` (as mlvos.data.synth) + natural.json.

    Sequence i uses np.random.default_rng([seed, i]) and exactly the hard cases of theme
    VAL_THEMES[i % 8] (the random ones of training clips are off, so the per-attribute
    breakdown says what each case costs); JPEG quality is drawn per sequence (60-95).
    natural.json records the photo library, every sequence's objects and their measured
    attributes (`mlvos eval` reads it for a per-attribute breakdown). Same arguments and photos
    -> byte-identical files.
    Built in a temporary folder beside `out` and renamed at the end.
    """
    from tqdm import tqdm

    from mlvos.palette import encode_frame, encode_mask
    from mlvos.fileio import atomic_dir

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

    rng = _rng(rng_or_seed)
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
