"""A location prior on propagated masks: each object is expected near where it was last frame.

The memory read matches appearance; a look-alike instance elsewhere in the frame (another
pedestrian, a car of the same model) can match a target's memory as well as the target does,
and KMN's read kernel, centred on each memory position's best match in the query, follows the
look-alike when it is that best match. This prior uses what the runtime already knows, the
previous frame's mask: object k's aggregated probability at pixel (y, x) is multiplied by

    w_k(y, x) = exp(-(dy^2 + dx^2) / (2 sigma_k^2)),  sigma_k = scale * max(box_h, box_w)

where dy, dx are the distances from (y, x) to the bounding box of the largest 8-connected
component of object k's previous mask (0 inside it) and the result is renormalized with the
background. The largest component, not the whole mask: once a label has leaked onto a
look-alike elsewhere, a box around all its pixels spans both and the prior stops holding it
(measured on vtest.avi: the first person's label grew to 10.3x its area that way, 1.67x with
the component's box; README, Measured). An object that was absent in the previous frame gets no
prior, so it can re-enter anywhere. Runs on the host (numpy, OpenCV's connected components)
after the read_decoder graph, so every backend and precision gets it unchanged.
"""

from __future__ import annotations

import numpy as np

from mlvos.errors import InputError, require

# Smallest sigma in pixels, so that a tiny object may still move a stride-16 cell or two.
MIN_SIGMA = 16.0


def check_scale(scale: float) -> float:
    """Validate a locality scale (0 = off)."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise InputError(f"locality scale must be a number >= 0 (0 = off), got {scale!r}") from None
    if not np.isfinite(s) or s < 0:
        raise InputError(f"locality scale must be a number >= 0 (0 = off), got {scale!r}")
    return s


def slot_boxes(slots: np.ndarray, objects: int) -> np.ndarray:
    """Bounding boxes of the largest 8-connected component of slots 1..objects in a label map.

    Args:
        slots: (H, W) uint8, 0 = background, k = object slot k-1.
        objects: number of object slots.

    Returns:
        (objects, 4) int64 [y0, x0, y1, x1] inclusive; a row of -1 for an absent object.
    """
    cv2 = require("cv2", "ort", "the location prior (--locality)")
    boxes = np.full((objects, 4), -1, np.int64)
    for i in range(objects):
        mask = (slots == i + 1).view(np.uint8)
        if not mask.any():
            continue
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # row 0 is the background
        x, y, w, h = (int(v) for v in stats[j, :4])
        boxes[i] = (y, x, y + h - 1, x + w - 1)
    return boxes


def _axis_weight(n: int, lo: int, hi: int, sigma: float) -> np.ndarray:
    p = np.arange(n, dtype=np.float32)
    d = np.maximum(np.maximum(lo - p, p - hi), 0.0)
    return np.exp(-0.5 * (d / sigma) ** 2).astype(np.float32)


def apply_locality(probs: np.ndarray, boxes: np.ndarray, scale: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Weight each object's probabilities by the location prior and re-take the argmax.

    Args:
        probs: (O, H, W) float32 aggregated object probabilities (background = 1 - sum).
        boxes: (O', 4) previous-frame boxes from `slot_boxes` (O' <= O; objects beyond O' and
            rows of -1 get no prior).
        scale: sigma as a multiple of the box's longer side (> 0).

    Returns:
        probs' (O, H, W) float32 and slots (H, W) uint8 (0 = background, k = object k-1),
        the distribution renormalized with the background.
    """
    probs = np.asarray(probs, np.float32)
    o, h, w = probs.shape
    bg = np.clip(1.0 - probs.sum(axis=0), 0.0, 1.0)
    weighted = probs.copy()
    for k in range(min(o, len(boxes))):
        y0, x0, y1, x1 = (int(v) for v in boxes[k])
        if y0 < 0:
            continue
        sigma = max(MIN_SIGMA, scale * max(y1 - y0 + 1, x1 - x0 + 1))
        weighted[k] *= _axis_weight(h, y0, y1, sigma)[:, None]
        weighted[k] *= _axis_weight(w, x0, x1, sigma)[None, :]
    total = bg + weighted.sum(axis=0)
    weighted /= np.maximum(total, 1e-12)[None]
    bg = bg / np.maximum(total, 1e-12)
    full = np.concatenate([bg[None], weighted], axis=0)
    return weighted, full.argmax(axis=0).astype(np.uint8)
