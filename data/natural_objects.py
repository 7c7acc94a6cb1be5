"""The objects of a natural scene (mlvos.data.natural): an RGBA sprite with closed-form motion
in world (background photo) coordinates, the random draw of that motion, and the warp of an
object into a frame (with motion blur) that the scene composites back to front.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(eq=False)
class SceneObject:
    """One object: an RGBA sprite and closed-form motion in world (photo) coordinates."""

    sprite: np.ndarray           # (s, s', 4) float32, RGB in [0, 255], alpha in [0, 1]
    label: int                   # 1.. for targets, 0 for distractors
    c0: np.ndarray               # world centre at t = 0
    scale0: float                # world px per sprite px at t = 0
    attrs: set = field(default_factory=set)
    group: int = -1              # look-alike group (copies of one sprite), -1 = none
    kind: str = "cutout"
    # motion parameters (drawn by draw_motion; occlusion and exit paths set by NaturalSequence)
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



def apply_homography(m: np.ndarray, x: np.ndarray,
                     y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y) mapped by the 3x3 homography m (elementwise over the arrays)."""
    d = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / d, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / d


def draw_motion(rng: np.random.Generator, ob: SceneObject, *, zoom: float, frames: int,
                fast: bool, ref_long: float) -> None:
    """Draw `ob`'s motion parameters (translation, scale, roll, depth drift, non-rigid warp
    fields) in place: about 15 % of slow objects stay still; `fast` ones sweep back and
    forth with motion blur. `zoom` is world px per frame px, `frames` the nominal length and
    `ref_long` the longer side of the reference frame (object speeds scale with it)."""
    z = zoom
    span = max(1.0, frames - 1)
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


def warp_object(ob: SceneObject, t: float, frame_to_world: np.ndarray, height: int,
                width: int, paint: bool = True):
    """(y0, x0, rgb (h, w, 3), alpha (h, w)) of one object over its clipped bbox in a
    height x width frame at time t, or None when no pixel of it has alpha > 0.5. paint=False
    skips the motion blur (only the alpha is needed)."""
    sh, sw = ob.sprite.shape[:2]
    to_world = ob.to_world(t)
    world_to_frame = np.linalg.inv(frame_to_world)
    m = world_to_frame @ to_world  # sprite -> frame
    pad = float(np.abs(ob.fields[0]).max() + np.abs(ob.fields[1]).max()) if ob.fields else 0
    cx = np.array([-pad, sw - 1 + pad, sw - 1 + pad, -pad])
    cy = np.array([-pad, -pad, sh - 1 + pad, sh - 1 + pad])
    fx, fy = apply_homography(m, cx, cy)
    x0, x1 = max(0, int(np.floor(fx.min())) - 1), min(width, int(np.ceil(fx.max())) + 2)
    y0, y1 = max(0, int(np.floor(fy.min())) - 1), min(height, int(np.ceil(fy.max())) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    inv = np.linalg.inv(m)
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    mx, my = apply_homography(inv, xs + 0 * ys, ys + 0 * xs)
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
        d = np.array(apply_homography(m, np.array(sw / 2), np.array(sh / 2))).ravel()
        m2 = world_to_frame @ ob.to_world(t + 0.5)
        d2 = np.array(apply_homography(m2, np.array(sw / 2), np.array(sh / 2))).ravel()
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
