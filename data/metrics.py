"""DAVIS region (J) and boundary (F) measures, numerically identical to the official code.

Reimplements `davis2017/metrics.py` and `davis2017/utils.py:db_statistics` of
https://github.com/davisvideochallenge/davis2017-evaluation (BSD-3-Clause) with numpy + cv2 only
(no skimage, no torch). Results equal the official functions bit for bit; only the work is
vectorised (boundary maps of a whole clip at once, dilation restricted to the boundaries' bounding
box, which cannot change a count because every boundary pixel lies inside that box).
"""

from __future__ import annotations

import warnings

import numpy as np

from mlvos.errors import require

BOUND_TH = 0.008  # official default: dilation radius = ceil(0.008 * image diagonal)


def disk(radius: float) -> np.ndarray:
    """Flat disk footprint, equal to `skimage.morphology.disk(radius)` (uint8, side 2r+1)."""
    coords = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(coords, coords)
    return np.array((x**2 + y**2) <= radius**2, dtype=np.uint8)


def bound_pixels(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> float:
    """Dilation radius used by `f_measure`: `bound_th` itself if >= 1, else ceil(th * diagonal)."""
    return bound_th if bound_th >= 1 else float(np.ceil(bound_th * np.linalg.norm(shape[-2:])))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary map of a binary mask (or a stack `(..., H, W)`), as `_seg2bmap`.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour; on
    the last row only the east neighbour counts, on the last column only the south one, and the
    bottom-right pixel is never a boundary. Pixels outside the image are treated as background.
    """
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[..., :, :-1] = seg[..., :, 1:]
    s[..., :-1, :] = seg[..., 1:, :]
    se[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[..., -1, :] = seg[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def db_eval_iou(annotation, segmentation, void_pixels=None):
    """Region similarity J (Jaccard index) per frame; union == 0 (both empty) gives 1.

    Args:
        annotation: binary GT mask `(H, W)` or stack `(T, H, W)`.
        segmentation: binary prediction, same shape.
        void_pixels: optional mask of pixels excluded from both sets.
    Returns:
        float for a single frame, float64 array `(T,)` for a stack.
    """
    annotation = np.asarray(annotation).astype(bool)
    segmentation = np.asarray(segmentation).astype(bool)
    if annotation.shape != segmentation.shape:
        raise ValueError(
            f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape"
        )
    valid = None if void_pixels is None else ~np.asarray(void_pixels).astype(bool)
    inter = segmentation & annotation
    union = segmentation | annotation
    if valid is not None:
        inter &= valid
        union &= valid
    inters = np.sum(inter, axis=(-2, -1))
    unions = np.sum(union, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inters / unions
    if j.ndim == 0:
        return 1 if np.isclose(unions, 0) else j
    j[np.isclose(unions, 0)] = 1
    return j


def _f_from_boundaries(fg_b: np.ndarray, gt_b: np.ndarray, bound_pix: float) -> float:
    """F of one frame from its two boundary maps (official `f_measure` arithmetic)."""
    cv2 = require("cv2", "ort", "the F measure's boundary dilation")

    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        # Crop to the bounding box of both boundaries: every pixel whose dilated value is read is
        # a boundary pixel, and every pixel that can reach it within the disk is one too.
        rows = np.flatnonzero(np.any(fg_b, axis=1) | np.any(gt_b, axis=1))
        cols = np.flatnonzero(np.any(fg_b, axis=0) | np.any(gt_b, axis=0))
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        fg_c = fg_b[box].astype(np.uint8)
        gt_c = gt_b[box].astype(np.uint8)
        kernel = disk(bound_pix)
        fg_dil = cv2.dilate(fg_c, kernel)
        gt_dil = cv2.dilate(gt_c, kernel)
        precision = np.sum(fg_c * gt_dil) / float(n_fg)
        recall = np.sum(gt_c * fg_dil) / float(n_gt)
    if precision + recall == 0:
        return 0
    return 2 * precision * recall / (precision + recall)


def db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th: float = BOUND_TH):
    """Boundary measure F per frame (official `db_eval_boundary` / `f_measure`).

    Boundaries come from `seg2bmap`, are dilated by `disk(bound_pixels(shape))` with cv2, and
    matched both ways. Empty prediction and empty GT boundary gives 1; exactly one empty gives 0.

    Returns:
        float for `(H, W)` inputs, float64 array `(T,)` for `(T, H, W)` stacks.
    """
    annotation = np.asarray(annotation)
    segmentation = np.asarray(segmentation)
    if annotation.shape != segmentation.shape:
        raise ValueError(
            f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape"
        )
    if annotation.ndim not in (2, 3):
        raise ValueError(f"db_eval_boundary takes 2-D or 3-D masks, got {annotation.ndim}-D")
    fg = segmentation.astype(bool)
    gt = annotation.astype(bool)
    if void_pixels is not None:
        valid = ~np.asarray(void_pixels).astype(bool)
        fg = fg & valid
        gt = gt & valid
    bound_pix = bound_pixels(annotation.shape, bound_th)
    fg_b = seg2bmap(fg)
    gt_b = seg2bmap(gt)
    if annotation.ndim == 2:
        return _f_from_boundaries(fg_b, gt_b, bound_pix)
    return np.array(
        [_f_from_boundaries(fg_b[t], gt_b[t], bound_pix) for t in range(annotation.shape[0])],
        dtype=np.float64,
    )


def db_eval_clip(
    annotation, segmentation, bound_th: float = BOUND_TH
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of one object over a clip `(T, H, W)`, without void pixels.

    Equals `(db_eval_iou(a, s), db_eval_boundary(a, s))` bit for bit but works inside the
    object's bounding box over the clip, grown by one pixel (boundary pixels sit up to one pixel
    above/left of a mask, and the zero margin keeps the last-row/column rule of `seg2bmap`
    confined to the true image border). The dilation radius still comes from the full frame size.
    """
    ann = np.asarray(annotation).astype(bool)
    seg = np.asarray(segmentation).astype(bool)
    if ann.shape != seg.shape or ann.ndim != 3:
        raise ValueError(
            f"annotation {ann.shape} and segmentation {seg.shape} must both be (T, H, W)"
        )
    t, h, w = ann.shape
    bound_pix = bound_pixels(ann.shape, bound_th)
    used = np.any(ann, axis=0) | np.any(seg, axis=0)
    rows, cols = np.flatnonzero(used.any(axis=1)), np.flatnonzero(used.any(axis=0))
    if rows.size == 0:  # object absent from GT and prediction in every frame
        return np.ones(t), np.ones(t)
    box = np.s_[
        :,
        max(rows[0] - 1, 0) : min(rows[-1] + 2, h),
        max(cols[0] - 1, 0) : min(cols[-1] + 2, w),
    ]
    ann, seg = ann[box], seg[box]
    j = db_eval_iou(ann, seg)
    fg_b, gt_b = seg2bmap(seg), seg2bmap(ann)
    f = np.array([_f_from_boundaries(fg_b[i], gt_b[i], bound_pix) for i in range(t)], np.float64)
    return j, f


def db_statistics(per_frame_values) -> tuple[float, float, float]:
    """Mean, recall (fraction > 0.5) and decay of one object's per-frame values.

    Decay = mean of the first minus mean of the last of 4 bins whose edges are
    `round(linspace(1, n, 5) + 1e-10) - 1`, cast to uint8 as the official code does, so, like the
    official code, clips of more than 256 evaluated frames get wrapped (meaningless) edges. The
    bin end `edge + 1` is computed in Python ints, as the official code did under numpy 1.x; under
    numpy >= 2 the official `uint8 + 1` overflows at edge 255 and yields NaN for exactly 256
    evaluated frames, a numpy-version artefact not reproduced here.
    """
    values = np.asarray(per_frame_values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [values[int(ids[i]) : int(ids[i + 1]) + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return mean, recall, decay


def label_map_iou(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over objects of the per-object IoU between two (H, W) label maps.

    Objects are the non-zero ids present in either map; two maps without any object agree
    perfectly (1.0). Used to compare propagations (exported vs PyTorch, fp16 vs fp32).
    """
    ids = np.union1d(np.unique(reference), np.unique(other))
    ids = ids[ids != 0]
    if ids.size == 0:
        return 1.0
    scores = []
    for i in ids:
        a, b = reference == i, other == i
        scores.append(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())
    return float(np.mean(scores))


def decisive_agreement(
    reference: np.ndarray, other: np.ndarray, obj_probs: np.ndarray | None, margin: float
) -> dict[str, float]:
    """Label-map agreement where the reference's decision is clear.

    Near-ties flip under any rounding; a pixel is decisive when its top-two reference
    probabilities (background = 1 - sum of the objects' included) differ by more than `margin`.

    Args:
        reference, other: (H, W) label maps (slot or object ids).
        obj_probs: (O, H, W) reference object probabilities; None: every pixel is decisive.

    Returns:
        {"mismatch": share of all pixels that differ, "decisive_fraction": share of pixels that
        are decisive, "decisive_mismatch": share of the decisive pixels that differ}.
    """
    mismatch = reference != other
    if obj_probs is None:
        decisive = np.ones_like(mismatch)
    else:
        full = np.concatenate([1.0 - obj_probs.sum(axis=0, keepdims=True), obj_probs], axis=0)
        top2 = np.sort(full, axis=0)[-2:]
        decisive = (top2[1] - top2[0]) > margin
    n = int(decisive.sum())
    return {
        "mismatch": float(mismatch.mean()) if mismatch.size else 0.0,
        "decisive_fraction": n / max(mismatch.size, 1),
        "decisive_mismatch": float(mismatch[decisive].sum() / n) if n else 0.0,
    }
