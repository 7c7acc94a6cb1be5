"""Procedural video-object-segmentation data with exact ground truth (numpy + cv2, no downloads).

Each sequence: 1..5 textured objects (ellipses, star polygons, noise blobs; stripes / checker /
noise / dot textures in saturated, mutually distinct hues) move over a low-saturation textured,
slowly panning background. Per object: smooth translation, scale change, rotation, a smooth
elastic (non-rigid) warp and a depth that drifts, so occlusion order can change; objects may
leave the frame and come back; a global illumination change runs over time.

Labels are exact: every object is warped once per frame into a hard mask, the image is painted
back-to-front from those same masks and the label map records the frontmost id per pixel. Motion
is a closed-form function of time, so `SynthSequence.render(t)` renders any frame directly.
"""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from mlvos.errors import InputError

FORMAT_VERSION = 1
_SHAPE_RADIUS = 0.42  # shapes fit in a disc of this radius (fraction of the sprite side)


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float32 (3,) in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Value noise: (h, w) float32 in [0, 1] with about `cells` features across the short side."""
    short = min(h, w)
    gh = max(2, round(cells * h / short) + 1)
    gw = max(2, round(cells * w / short) + 1)
    coarse = rng.random((gh, gw), dtype=np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _pattern(rng: np.random.Generator, h: int, w: int, kind: str, period: float) -> np.ndarray:
    """Two-colour blend weight (h, w) float32 in [0, 1] for a texture kind."""
    if kind == "noise":
        t = _smooth_noise(rng, h, w, min(h, w) / period)
        return np.clip((t - 0.5) * 3.0 + 0.5, 0.0, 1.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    u = (xx * np.cos(ang) + yy * np.sin(ang)) * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        return 0.5 + 0.5 * np.tanh(3.0 * np.sin(u))
    v = (-xx * np.sin(ang) + yy * np.cos(ang)) * (2 * np.pi / period)
    if kind == "checker":
        return 0.5 + 0.5 * np.tanh(4.0 * np.sin(u) * np.sin(v))
    # dots: random discs of the second colour
    t = np.zeros((h, w), dtype=np.float32)
    n = int(rng.integers(6, 16) * (h * w) / (period * period * 4))
    for _ in range(max(3, min(n, 400))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(t, c, max(1, int(rng.uniform(0.25, 0.6) * period)), 1.0, -1, cv2.LINE_AA)
    return t


def _object_texture(rng: np.random.Generator, size: int, hue: float) -> np.ndarray:
    """(size, size, 3) float32 RGB in [0, 255]: a saturated two-tone pattern of one hue."""
    kind = ("noise", "stripes", "checker", "dots")[int(rng.integers(4))]
    period = size * rng.uniform(0.08, 0.22)
    val = rng.uniform(0.65, 1.0)
    c1 = _hsv(hue, rng.uniform(0.6, 1.0), val)
    c2 = _hsv(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.5, 1.0), val * rng.uniform(0.3, 0.6))
    t = _pattern(rng, size, size, kind, period)[..., None]
    tex = c1 * (1.0 - t) + c2 * t
    shade = 0.85 + 0.3 * _smooth_noise(rng, size, size, 2.0)  # soft lighting variation
    return (tex * shade[..., None]).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 in [0, 255]: low-saturation multi-scale texture (objects stand out)."""
    hue = rng.uniform()
    c1 = _hsv(hue, rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.45))
    c2 = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.25), rng.uniform(0.55, 0.8))
    short = min(h, w)
    t = 0.55 * _smooth_noise(rng, h, w, rng.uniform(2, 5)) \
        + 0.3 * _smooth_noise(rng, h, w, rng.uniform(8, 16)) \
        + 0.15 * _smooth_noise(rng, h, w, short / rng.uniform(3, 6))
    if rng.random() < 0.5:  # faint large-scale tiling, so the background is not just blur
        t = 0.8 * t + 0.2 * _pattern(rng, h, w, "checker", short * rng.uniform(0.15, 0.4))
    return (c1 * (1.0 - t[..., None]) + c2 * t[..., None]).astype(np.float32)


def _shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) float32 alpha in {0, 1}: ellipse, star polygon or noise blob, centred."""
    alpha = np.zeros((size, size), dtype=np.float32)
    c = (size - 1) / 2.0
    rmax = _SHAPE_RADIUS * size
    kind = int(rng.integers(3))
    if kind == 0:
        axes = (max(2, int(rmax * rng.uniform(0.6, 1.0))), max(2, int(rmax * rng.uniform(0.4, 1))))
        cv2.ellipse(alpha, (round(c), round(c)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    elif kind == 1:
        k = int(rng.integers(3, 10))
        ang = np.sort(np.arange(k) * 2 * np.pi / k + rng.uniform(-0.4, 0.4, k) * np.pi / k)
        rad = rmax * rng.uniform(0.45, 1.0, k)
        pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1)
        cv2.fillPoly(alpha, [np.round(pts).astype(np.int32)], 1.0)
    else:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        r = np.hypot(xx - c, yy - c) / rmax
        f = (1.0 - r) + 0.6 * (_smooth_noise(rng, size, size, rng.uniform(2.5, 5)) - 0.5)
        blob = ((f > 0.3) & (r < 1.0)).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(blob, connectivity=8)
        if n > 1:  # keep the largest piece: one object = one connected blob
            blob = (lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
        alpha = blob.astype(np.float32)
    if alpha.sum() < 0.05 * size * size:  # degenerate draw: fall back to a disc
        cv2.circle(alpha, (round(c), round(c)), max(2, int(0.7 * rmax)), 1.0, -1)
    return alpha


class _Object:
    """One object's sprite and closed-form motion parameters (all in frame pixels / radians)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, hue: float):
        short = min(height, width)
        self.size = max(8, int(rng.uniform(0.22, 0.5) * short))
        s = self.size
        self.sprite = np.concatenate(
            [_object_texture(rng, s, hue), _shape(rng, s)[..., None]], axis=2)  # (s, s, 4)
        # elastic: two smooth fields mixed with sinusoidal weights over time
        amp = rng.uniform(0.0, 0.05) * s
        fields = []
        for _ in range(2):
            coarse = rng.uniform(-1, 1, size=(4, 4, 2)).astype(np.float32)
            f = cv2.resize(coarse, (s, s), interpolation=cv2.INTER_CUBIC)
            fields.append(np.clip(f, -1, 1) * np.float32(amp))
        self.fields = fields
        self.max_disp = float(amp * 2 * np.sqrt(2))
        self.el_w = 2 * np.pi / rng.uniform(15, 50, 2)
        self.el_p = rng.uniform(0, 2 * np.pi, 2)
        # scale s(t) = s0 * exp(a (sin(w t + p) - sin p))
        self.s0 = rng.uniform(0.8, 1.15)
        self.s_amp = rng.uniform(0.0, 0.15)
        self.s_w = 2 * np.pi / rng.uniform(30, 100)
        self.s_p = rng.uniform(0, 2 * np.pi)
        # rotation: steady spin plus a wobble
        self.r0 = rng.uniform(0, 2 * np.pi)
        self.r_speed = np.deg2rad(rng.uniform(-2.5, 2.5))
        self.r_amp = rng.uniform(0.0, 0.3)
        self.r_w = 2 * np.pi / rng.uniform(30, 90)
        self.r_p = rng.uniform(0, 2 * np.pi)
        # translation: Lissajous c(t) = c0 + A (sin(w t + p) - sin p), peak speed v px/frame
        longest = max(height, width)
        self.c0 = np.zeros(2)
        period = rng.uniform(30, 120, 2)
        speed = rng.uniform(0.002, 0.012, 2) * longest
        self.t_w = 2 * np.pi / period
        self.t_amp = speed / self.t_w
        self.t_p = rng.uniform(0, 2 * np.pi, 2)
        # depth z(t) = z0 + b sin(w t + p): swaps order with neighbours when b is large
        self.z_amp = rng.uniform(0.0, 1.2)
        self.z_w = 2 * np.pi / rng.uniform(30, 100)
        self.z_p = rng.uniform(0, 2 * np.pi)
        self.z0 = 0.0
        self.exit_vec: np.ndarray | None = None  # set for an object forced out and back in
        self.exit_period = 1.0

    def scale(self, t: float) -> float:
        return self.s0 * float(np.exp(self.s_amp * (np.sin(self.s_w * t + self.s_p)
                                                    - np.sin(self.s_p))))

    def max_scale(self) -> float:
        return self.s0 * float(np.exp(2 * self.s_amp))

    def radius(self) -> float:
        """Upper bound of the object's extent from its centre, any t (frame pixels)."""
        return self.max_scale() * (self.size / np.sqrt(2) + self.max_disp) + 2.0

    def centre(self, t: float) -> np.ndarray:
        c = self.c0 + self.t_amp * (np.sin(self.t_w * t + self.t_p) - np.sin(self.t_p))
        if self.exit_vec is not None:
            # 0 at t = 0, rises smoothly, holds 1 (fully outside) around mid-period, back to 0
            u = 1.5 * (1.0 - np.cos(2 * np.pi * t / self.exit_period)) / 2.0
            c = c + self.exit_vec * min(1.0, u)
        return c

    def depth(self, t: float) -> float:
        if self.exit_vec is not None:
            return np.inf  # the exit/re-entry object stays in front so its return is visible
        return self.z0 + self.z_amp * np.sin(self.z_w * t + self.z_p)

    def warp(self, t: float, height: int, width: int):
        """Warp the sprite to frame time t.

        Returns (y0, x0, mask (h, w) bool, texture (h, w, 3) float32) over the clipped bounding
        box, or None when the object is entirely outside the frame.
        """
        c = self.centre(t)
        s = self.scale(t)
        r = self.radius()
        x0, x1 = max(0, int(np.floor(c[0] - r))), min(width, int(np.ceil(c[0] + r)) + 1)
        y0, y1 = max(0, int(np.floor(c[1] - r))), min(height, int(np.ceil(c[1] + r)) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        th = self.r0 + self.r_speed * t + self.r_amp * np.sin(self.r_w * t + self.r_p)
        cos, sin = np.cos(th) / s, np.sin(th) / s
        half = (self.size - 1) / 2.0
        xs = np.arange(x0, x1, dtype=np.float32) - np.float32(c[0])
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(c[1])
        # frame -> sprite: rotate by -theta, divide by scale, shift to the sprite centre
        mx = (np.float32(cos) * xs + np.float32(sin) * ys + np.float32(half)).astype(np.float32)
        my = (np.float32(-sin) * xs + np.float32(cos) * ys + np.float32(half)).astype(np.float32)
        wts = np.sin(self.el_w * t + self.el_p)
        field = self.fields[0] * np.float32(wts[0]) + self.fields[1] * np.float32(wts[1])
        disp = cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mx += disp[..., 0]
        my += disp[..., 1]
        out = cv2.remap(self.sprite, mx, my, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mask = out[..., 3] > 0.5  # one hard mask for both the label and the painted pixels
        if not mask.any():
            return None
        return y0, x0, mask, out[..., :3]


class SynthSequence:
    """One procedural sequence; `render(t)` draws frame t (t = 0, 1, ... or any real t >= 0).

    Args:
        rng_or_seed: numpy Generator or seed; all randomness comes from it (deterministic).
        frames: nominal length F (iteration yields F frames; exit/re-entry is timed on it).
        height, width: frame size in pixels (>= 16).
        num_objects: exact object count, or None to draw from [min_objects, max_objects].
        force_exit: object 1 leaves the frame around the middle of the sequence (invisible for
            roughly the middle quarter) and is back, in front, by the last frame. Needs F >= 5.
        exit_prob: probability that a random sequence gets such an exit/re-entry object.
        noise: add per-frame Gaussian pixel noise (sigma 1..3); illumination: global
            brightness/tint change over time.
    """

    def __init__(self, rng_or_seed, frames: int, height: int = 480, width: int = 854,
                 num_objects: int | None = None, *, min_objects: int = 1, max_objects: int = 5,
                 force_exit: bool = False, exit_prob: float = 0.0, noise: bool = True,
                 illumination: bool = True):
        _check_size(frames, height, width, min_objects, max_objects, num_objects)
        if force_exit and frames < 5:
            raise InputError(f"force_exit needs frames >= 5 (out and back in), received {frames}")
        rng = _rng(rng_or_seed)
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        k = int(num_objects) if num_objects is not None else \
            int(rng.integers(min_objects, max_objects + 1))
        self.exits = bool(force_exit) or (frames >= 5 and rng.random() < exit_prob)
        # hues spread around the circle so objects differ from each other
        h0 = rng.uniform()
        hues = [h0 + (i + rng.uniform(-0.25, 0.25)) / k for i in range(k)]
        self.objects = [_Object(rng, height, width, hue) for hue in hues]
        for i, z in enumerate(rng.permutation(k)):
            self.objects[i].z0 = float(z)
        if self.exits:
            self.objects[0].t_amp = np.minimum(self.objects[0].t_amp, 0.03 * min(height, width))
        # background: larger than the frame, panned slowly
        self.margin = max(2, int(0.08 * min(height, width)))
        m = self.margin
        self.background = _background(rng, height + 2 * m, width + 2 * m)
        self.pan_amp = rng.uniform(0.0, 0.9, 2) * m
        self.pan_w = 2 * np.pi / rng.uniform(60, 200, 2)
        self.pan_p = rng.uniform(0, 2 * np.pi, 2)
        # global illumination: gain and per-channel tint
        self.illumination = illumination
        self.gain_amp = rng.uniform(0.05, 0.25)
        self.tint_amp = rng.uniform(0.0, 0.05, 3)
        self.ill_w = 2 * np.pi / rng.uniform(30, 120, 4)
        self.ill_p = rng.uniform(0, 2 * np.pi, 4)
        self.noise_sigma = float(rng.uniform(1.0, 3.0)) if noise else 0.0
        self._noise_seed = int(rng.integers(2**63))
        self._place(rng)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def _place(self, rng: np.random.Generator) -> None:
        """Choose start positions so every object is clearly visible in frame 0."""
        h, w = self.height, self.width
        for attempt in range(60):
            for i, ob in enumerate(self.objects):
                lo = 0.2 if (i == 0 and self.exits) else 0.1
                ob.c0 = np.array([rng.uniform(lo, 1 - lo) * w, rng.uniform(lo, 1 - lo) * h])
            if self.exits:
                self._aim_exit(self.objects[0])
            layers = self._layers(0.0)
            _, labels = self._compose(0.0, layers, paint=False)
            counts = np.bincount(labels.ravel(), minlength=self.num_objects + 1)
            ok = True
            for ob_id, layer in enumerate(self._by_object(layers), 1):
                full = 0 if layer is None else int(layer[2].sum())
                if full < 16 or counts[ob_id] < max(16, 0.3 * full):
                    ok = False
            if ok:
                return
            if attempt % 10 == 9:  # crowded: shrink everything a little
                for ob in self.objects:
                    ob.s0 *= 0.85
        # pathological sizes (tiny frames): keep the objects that are visible, relabelled 1..k
        layers = self._by_object(self._layers(0.0))
        visible = [ob for ob, layer in zip(self.objects, layers, strict=True) if layer is not None]
        if not visible:
            raise InputError(f"cannot place any object in a {w}x{h} frame; use a larger size")
        self.objects = visible
        self.exits = any(ob.exit_vec is not None for ob in visible)

    def _aim_exit(self, ob: _Object) -> None:
        """Point object 1's exit vector through the nearest border, far enough to leave fully."""
        x, y = ob.c0
        dists = {(-1, 0): x, (1, 0): self.width - x, (0, -1): y, (0, 1): self.height - y}
        direction = min(dists, key=dists.get)
        reach = dists[direction] + ob.radius() + 2 * float(np.max(ob.t_amp)) + 4.0
        ob.exit_vec = np.array(direction, dtype=np.float64) * reach
        ob.exit_period = float(self.frames - 1)

    def _layers(self, t: float) -> list:
        """[(depth, object index, (y0, x0, mask, tex)) for visible objects], back to front."""
        out = []
        for i, ob in enumerate(self.objects):
            warped = ob.warp(t, self.height, self.width)
            if warped is not None:
                out.append((ob.depth(t), i, warped))
        out.sort(key=lambda item: (item[0], item[1]))
        return out

    def _by_object(self, layers: list) -> list:
        found = {i: warped for _, i, warped in layers}
        return [found.get(i) for i in range(len(self.objects))]

    def _compose(self, t: float, layers: list, paint: bool = True):
        h, w = self.height, self.width
        labels = np.zeros((h, w), dtype=np.uint8)
        img = None
        if paint:
            off = self.margin + self.pan_amp * np.sin(self.pan_w * t + self.pan_p)
            mat = np.array([[1, 0, off[0]], [0, 1, off[1]]], dtype=np.float32)
            img = cv2.warpAffine(self.background, mat, (w, h),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REFLECT_101)
        for _, i, (y0, x0, mask, tex) in layers:
            mh, mw = mask.shape
            labels[y0:y0 + mh, x0:x0 + mw][mask] = i + 1
            if paint:
                img[y0:y0 + mh, x0:x0 + mw][mask] = tex[mask]
        return img, labels

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Frame t -> (frame (H, W, 3) uint8 RGB, label (H, W) uint8 ids 0..num_objects)."""
        img, labels = self._compose(t, self._layers(t))
        if self.illumination:
            s = np.sin(self.ill_w * t + self.ill_p)
            gain = (1.0 + self.gain_amp * s[0]) * (1.0 + self.tint_amp * s[1:])
            img *= gain.astype(np.float32)
        if self.noise_sigma > 0:
            rng = np.random.default_rng([self._noise_seed, int(round(t * 1000))])
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise_sigma)
        frame = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return frame, labels

    def __len__(self) -> int:
        return self.frames

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for t in range(self.frames):
            yield self.render(float(t))


def _check_size(frames, height, width, min_objects, max_objects, num_objects=None) -> None:
    for name, v, lo in (("frames", frames, 1), ("height", height, 16), ("width", width, 16)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, received {v!r}")
    if not (1 <= min_objects <= max_objects <= 255):
        raise InputError(
            f"need 1 <= min_objects <= max_objects <= 255, received min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )
    if num_objects is not None and not (1 <= int(num_objects) <= 255):
        raise InputError(f"num_objects must be in 1..255, received {num_objects}")


def synth_sequence(rng_or_seed, frames: int, height: int = 480, width: int = 854,
                   num_objects: int | None = None, **options
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame (H, W, 3) uint8 RGB, label (H, W) uint8 ids) for t = 0..frames-1.

    Options are those of `SynthSequence` (min_objects, max_objects, force_exit, exit_prob,
    noise, illumination). Object ids are 1..num_objects and all are visible in frame 0.
    """
    yield from SynthSequence(rng_or_seed, frames, height, width, num_objects, **options)


def synth_clip(rng_or_seed, num_frames: int = 3, size: int = 384, max_skip: int = 5,
               num_objects: int | None = None, *, max_objects: int = 3, **options):
    """An on-the-fly training clip from a fresh synthetic sequence (no files).

    Frames are t = 0 and then steps of 1..max(1, max_skip) frames.

    Returns:
        mlvos.data.clips.Clip(frames (T, size, size, 3) uint8, labels (T, size, size) uint8,
        num_objects).
    """
    from mlvos.data.clips import Clip

    rng = _rng(rng_or_seed)
    seq = SynthSequence(rng, max(5, num_frames * max(1, max_skip)), size, size, num_objects,
                        min_objects=1, max_objects=max_objects, **options)
    steps = rng.integers(1, max(1, max_skip) + 1, size=num_frames - 1)
    times = np.concatenate([[0], np.cumsum(steps)]).astype(float)
    pairs = [seq.render(t) for t in times]
    return Clip(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]),
                seq.num_objects)


def make_synthetic_dataset(out: str | os.PathLike, *, sequences: int, frames: int, seed: int,
                           height: int = 480, width: int = 854, min_objects: int = 1,
                           max_objects: int = 5, split: str = "val", exit_prob: float = 0.3,
                           jpeg_quality: int = 90, force: bool = False,
                           progress: bool = False) -> Path:
    """Write a DAVIS-2017-layout synthetic dataset to `out`; return its path.

    Layout: JPEGImages/480p/<seq>/00000.jpg, Annotations/480p/<seq>/00000.png (palette, every
    frame), ImageSets/2017/<split>.txt, synth.json (parameters). Sequences are named
    synth-0000, ...; sequence i uses np.random.default_rng([seed, i]), so the same arguments give
    byte-identical files. Built in a temporary folder beside `out` and renamed at the end.

    Raises:
        InputError: bad arguments, or `out` exists and force is False.
    """
    from tqdm import tqdm

    from mlvos.fileio import atomic_dir
    from mlvos.palette import encode_frame, encode_mask

    _check_size(frames, height, width, min_objects, max_objects)
    if not isinstance(sequences, (int, np.integer)) or sequences < 1:
        raise InputError(f"sequences must be an integer >= 1, received {sequences!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, received {seed!r}")
    if not split or any(c in split for c in "/\\") or split.startswith("."):
        raise InputError(f"split must be a plain name like 'val' or 'train', received {split!r}")
    if not 1 <= jpeg_quality <= 100:
        raise InputError(f"jpeg_quality must be in 1..100, received {jpeg_quality}")
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"output directory {out} already exists; pass --force (force=True) "
                         "to replace it, or choose another path")
    names = [f"synth-{i:04d}" for i in range(sequences)]
    meta = {"format": "mlvos-synth", "version": FORMAT_VERSION, "seed": int(seed),
            "sequences": int(sequences), "frames": int(frames), "height": int(height),
            "width": int(width), "min_objects": int(min_objects),
            "max_objects": int(max_objects), "split": split, "exit_prob": float(exit_prob),
            "jpeg_quality": int(jpeg_quality), "objects": {}, "exit_reentry": {}}
    with atomic_dir(out, force=force) as tmp, \
            tqdm(total=sequences * frames, unit="frame", desc="synth", disable=not progress) as bar:
        for i, name in enumerate(names):
            seq = SynthSequence(np.random.default_rng([int(seed), i]), frames, height, width,
                                min_objects=min_objects, max_objects=max_objects,
                                exit_prob=exit_prob)
            meta["objects"][name] = seq.num_objects
            meta["exit_reentry"][name] = seq.exits
            jdir = tmp / "JPEGImages" / "480p" / name
            adir = tmp / "Annotations" / "480p" / name
            jdir.mkdir(parents=True)
            adir.mkdir(parents=True)
            for t, (frame, label) in enumerate(seq):
                # the whole folder is renamed atomically at the end, so plain writes suffice
                (jdir / f"{t:05d}.jpg").write_bytes(encode_frame(frame, quality=jpeg_quality))
                (adir / f"{t:05d}.png").write_bytes(encode_mask(label))
                bar.update(1)
        sets = tmp / "ImageSets" / "2017"
        sets.mkdir(parents=True)
        (sets / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
