"""Image operations the runtime needs, in numpy only (no OpenCV/PIL dependency on the device)."""

from __future__ import annotations

import numpy as np


def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Half-pixel centers, as OpenCV/PyTorch bilinear (align_corners=False).
    x = (np.arange(dst, dtype=np.float32) + 0.5) * (src / dst) - 0.5
    x = np.clip(x, 0, src - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, C) uint8, bilinear with half-pixel centers."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    r0, r1, rw = _axis_weights(h, height)
    c0, c1, cw = _axis_weights(w, width)
    x = img.astype(np.float32)
    rows = x[r0] * (1 - rw)[:, None, None] + x[r1] * rw[:, None, None]
    out = rows[:, c0] * (1 - cw)[None, :, None] + rows[:, c1] * cw[None, :, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) label map -> (height, width), nearest neighbour (never invents ids)."""
    h, w = labels.shape[:2]
    if (h, w) == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def internal_size(height: int, width: int, max_side: int | None,
                  scale: float = 1.0) -> tuple[int, int]:
    """Size the network sees: the frame scaled by `scale`, then down so that its longer side is
    at most `max_side` (if given)."""
    if scale != 1.0:
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))
