"""Sprites of the natural-video generator (mlvos.data.natural): random object shapes, photo
cut-outs and the Lab colour statistics that pull a sprite's colours towards the background's.
"""

from __future__ import annotations

import cv2
import numpy as np


def _noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth value noise (h, w) float32 in [0, 1] with about `cells` features per short side."""
    short = min(h, w)
    gh, gw = max(2, round(cells * h / short) + 1), max(2, round(cells * w / short) + 1)
    f = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(f.min()), float(f.max())
    return (f - lo) / max(hi - lo, 1e-6)



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



def cut_out(rng: np.random.Generator, photo: np.ndarray, side: int, aspect: float,
            mask_kind: str | None = None) -> np.ndarray:
    """A sprite cut from a window of `photo`: (h, w, 4) float32, RGB in [0, 255] and an
    anti-aliased `random_mask` alpha in [0, 1]; the longer side is `side`, h / w = `aspect`
    (at least 8 px each)."""
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


def lab_stats(rgb: np.ndarray, weight: np.ndarray | None = None):
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
    lab, mu, sd = lab_stats(rgb, alpha)
    mu_t, sd_t = target
    mu_n = mu + strength * (mu_t - mu)
    sd_n = sd * (1 - strength) + sd_t * strength
    out = (lab - mu) * (sd_n / sd) + mu_n
    out = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB) * 255.0
    return np.clip(out, 0, 255).astype(np.float32)
