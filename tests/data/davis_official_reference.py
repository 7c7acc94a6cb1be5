# Test oracle: a literal port of the official DAVIS 2017 evaluation code
# (https://github.com/davisvideochallenge/davis2017-evaluation: davis2017/metrics.py,
# davis2017/utils.py:db_statistics, davis2017/davis.py + davis2017/results.py mask loading,
# davis2017/evaluation.py semi-supervised loop, evaluation_method.py global numbers).
#
# It keeps the official structure step by step (float64 mask stacks, objects separated with
# `tmp == masks`, per-frame f_measure with full-frame cv2.dilate, the same special cases) and
# deliberately shares no code with mlvos.data.metrics / mlvos.data.evaluate. Adaptations:
#   * skimage.morphology.disk is replaced by `disk` below, the formula skimage uses
#     (L = arange(-r, r + 1); X, Y = meshgrid(L, L); X**2 + Y**2 <= r**2, uint8);
#     skimage is used instead when it is importable.
#   * np.bool (removed from numpy) is written as bool.
#   * sys.exit() on an invalid prediction raises OfficialExit instead.
#   * folders are passed directly (<gt_root>/<seq>/*.png, <res_root>/<seq>/<frame>.png) instead
#     of the DAVIS root + ImageSets list; only the semi-supervised task is ported.
#
# Original code: Copyright (c) 2020, DAVIS: Densely Annotated VIdeo Segmentation.
# All rights reserved. Licensed under the BSD 3-Clause License:
#
# Redistribution and use in source and binary forms, with or without modification, are permitted
# provided that the following conditions are met:
# 1. Redistributions of source code must retain the above copyright notice, this list of
#    conditions and the following disclaimer.
# 2. Redistributions in binary form must reproduce the above copyright notice, this list of
#    conditions and the following disclaimer in the documentation and/or other materials provided
#    with the distribution.
# 3. Neither the name of the copyright holder nor the names of its contributors may be used to
#    endorse or promote products derived from this software without specific prior written
#    permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
# IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
# FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
# CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
# DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
# WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY
# WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""Reference (oracle) port of the official DAVIS 2017 semi-supervised evaluation, for tests only."""

from __future__ import annotations

import os
import warnings
from glob import glob

import cv2
import numpy as np
from PIL import Image

VOID_LABEL = 255


class OfficialExit(Exception):
    """Where the official code prints a message and calls sys.exit()."""


def disk(radius):
    """skimage.morphology.disk(radius) (uint8), or its formula when skimage is missing."""
    try:
        from skimage.morphology import disk as sk_disk
    except ImportError:
        pass
    else:
        return sk_disk(radius)
    return disk_formula(radius)


def disk_formula(radius):
    """The footprint formula of skimage.morphology.disk (decomposition=None, strict_radius)."""
    grid = np.arange(-radius, radius + 1)
    xs, ys = np.meshgrid(grid, grid)
    return np.array((xs**2 + ys**2) <= radius**2, dtype=np.uint8)


# ---------------------------------------------------------------- davis2017/metrics.py


def db_eval_iou(annotation, segmentation, void_pixels=None):
    assert annotation.shape == segmentation.shape
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    if void_pixels is not None:
        assert annotation.shape == void_pixels.shape
        void_pixels = void_pixels.astype(bool)
    else:
        void_pixels = np.zeros_like(segmentation)
    not_void = np.logical_not(void_pixels)
    inters = np.sum((segmentation & annotation) & not_void, axis=(-2, -1))
    union = np.sum((segmentation | annotation) & not_void, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inters / union
    if j.ndim == 0:
        j = 1 if np.isclose(union, 0) else j
    else:
        j[np.isclose(union, 0)] = 1
    return j


def db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th=0.008):
    assert annotation.shape == segmentation.shape
    if void_pixels is not None:
        assert annotation.shape == void_pixels.shape
    if annotation.ndim == 3:
        n_frames = annotation.shape[0]
        f_res = np.zeros(n_frames)
        for frame_id in range(n_frames):
            void_frame = None if void_pixels is None else void_pixels[frame_id, :, :]
            f_res[frame_id] = f_measure(
                segmentation[frame_id, :, :], annotation[frame_id, :, :], void_frame, bound_th
            )
    elif annotation.ndim == 2:
        f_res = f_measure(segmentation, annotation, void_pixels, bound_th=bound_th)
    else:
        raise ValueError(f"db_eval_boundary does not support {annotation.ndim} dimensions")
    return f_res


def f_measure(foreground_mask, gt_mask, void_pixels=None, bound_th=0.008):
    assert np.atleast_3d(foreground_mask).shape[2] == 1
    if void_pixels is not None:
        void_pixels = void_pixels.astype(bool)
    else:
        void_pixels = np.zeros_like(foreground_mask).astype(bool)

    if bound_th >= 1:
        bound_pix = bound_th
    else:
        bound_pix = np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))

    fg_boundary = _seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = _seg2bmap(gt_mask * np.logical_not(void_pixels))

    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))

    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil

    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)

    if n_fg == 0 and n_gt > 0:
        precision = 1
        recall = 0
    elif n_fg > 0 and n_gt == 0:
        precision = 0
        recall = 1
    elif n_fg == 0 and n_gt == 0:
        precision = 1
        recall = 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)

    if precision + recall == 0:
        f = 0
    else:
        f = 2 * precision * recall / (precision + recall)
    return f


def _seg2bmap(seg, width=None, height=None):
    seg = seg.astype(bool)
    seg[seg > 0] = 1
    assert np.atleast_3d(seg).shape[2] == 1

    width = seg.shape[1] if width is None else width
    height = seg.shape[0] if height is None else height
    h, w = seg.shape[:2]
    assert width == w and height == h  # the official resize branch is never used by the eval

    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]

    b = seg ^ e | seg ^ s | seg ^ se  # precedence: (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


# ---------------------------------------------------------------- davis2017/utils.py


def db_statistics(per_frame_values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        m = np.nanmean(per_frame_values)
        o = np.nanmean(per_frame_values > 0.5)

    n_bins = 4
    ids = np.round(np.linspace(1, len(per_frame_values), n_bins + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)
    d_bins = [per_frame_values[ids[i] : ids[i + 1] + 1] for i in range(0, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        d = np.nanmean(d_bins[0]) - np.nanmean(d_bins[3])
    return m, o, d


# ---------------------------------------------------------------- davis2017/davis.py, results.py


def get_all_masks(gt_root, sequence):
    """DAVIS.get_all_masks(seq, separate_objects_masks=True) of the current official master."""
    paths = np.sort(glob(os.path.join(gt_root, sequence, "*.png"))).tolist()
    first = np.array(Image.open(paths[0]))
    masks = np.zeros((len(paths), *first.shape))
    masks_id = []
    for i, path in enumerate(paths):
        masks[i, ...] = np.array(Image.open(path))
        masks_id.append("".join(path.split("/")[-1].split(".")[:-1]))
    masks_void = np.zeros_like(masks)
    for k in range(masks.shape[0]):
        masks_void[k, ...] = masks[k, ...] == 255
        masks[k, masks[k, ...] == 255] = 0
    num_objects = int(np.max(masks[0, ...]))
    tmp = np.ones((num_objects, *masks.shape))
    tmp = tmp * np.arange(1, num_objects + 1)[:, None, None, None]
    masks = tmp == masks[None, ...]
    masks = masks > 0
    return masks, masks_void, masks_id


def read_masks(res_root, sequence, masks_id):
    """Results.read_masks: objects = 1..max id over the read frames (255 not special)."""

    def read_one(frame_id):
        path = os.path.join(res_root, sequence, f"{frame_id}.png")
        try:
            return np.array(Image.open(path))
        except OSError as e:
            raise OfficialExit(f"{sequence} frame {frame_id} not found!") from e

    mask_0 = read_one(masks_id[0])
    masks = np.zeros((len(masks_id), *mask_0.shape))
    for ii, m in enumerate(masks_id):
        masks[ii, ...] = read_one(m)
    num_objects = int(np.max(masks))
    tmp = np.ones((num_objects, *masks.shape))
    tmp = tmp * np.arange(1, num_objects + 1)[:, None, None, None]
    masks = (tmp == masks[None, ...]) > 0
    return masks


# ---------------------------------------------------------------- davis2017/evaluation.py


def evaluate_semisupervised(all_gt_masks, all_res_masks, all_void_masks, metric=("J", "F")):
    if all_res_masks.shape[0] > all_gt_masks.shape[0]:
        raise OfficialExit(
            "In your PNG files there is an index higher than the number of objects in the sequence!"
        )
    elif all_res_masks.shape[0] < all_gt_masks.shape[0]:
        zero_padding = np.zeros(
            (all_gt_masks.shape[0] - all_res_masks.shape[0], *all_res_masks.shape[1:])
        )
        all_res_masks = np.concatenate([all_res_masks, zero_padding], axis=0)
    j_res = np.zeros(all_gt_masks.shape[:2])
    f_res = np.zeros(all_gt_masks.shape[:2])
    for ii in range(all_gt_masks.shape[0]):
        if "J" in metric:
            j_res[ii, :] = db_eval_iou(
                all_gt_masks[ii, ...], all_res_masks[ii, ...], all_void_masks
            )
        if "F" in metric:
            f_res[ii, :] = db_eval_boundary(
                all_gt_masks[ii, ...], all_res_masks[ii, ...], all_void_masks
            )
    return j_res, f_res


def evaluate(gt_root, res_root, sequences):
    """DAVISEvaluation.evaluate for task='semi-supervised' -> metrics_res dict."""
    metrics_res = {
        "J": {"M": [], "R": [], "D": [], "M_per_object": {}},
        "F": {"M": [], "R": [], "D": [], "M_per_object": {}},
    }
    for seq in sequences:
        all_gt_masks, _all_void_masks, all_masks_id = get_all_masks(gt_root, seq)
        all_gt_masks, all_masks_id = all_gt_masks[:, 1:-1, :, :], all_masks_id[1:-1]
        all_res_masks = read_masks(res_root, seq, all_masks_id)
        j_res, f_res = evaluate_semisupervised(all_gt_masks, all_res_masks, None)
        for ii in range(all_gt_masks.shape[0]):
            name = f"{seq}_{ii + 1}"
            for key, res in (("J", j_res), ("F", f_res)):
                mean, recall, decay = db_statistics(res[ii])
                metrics_res[key]["M"].append(mean)
                metrics_res[key]["R"].append(recall)
                metrics_res[key]["D"].append(decay)
                metrics_res[key]["M_per_object"][name] = mean
    return metrics_res


# ---------------------------------------------------------------- evaluation_method.py

G_MEASURES = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


def global_results(metrics_res):
    """The global-results row as {measure: value} (before the CSV's %.3f formatting)."""
    j, f = metrics_res["J"], metrics_res["F"]
    final_mean = (np.mean(j["M"]) + np.mean(f["M"])) / 2.0
    g_res = [
        final_mean,
        np.mean(j["M"]),
        np.mean(j["R"]),
        np.mean(j["D"]),
        np.mean(f["M"]),
        np.mean(f["R"]),
        np.mean(f["D"]),
    ]
    return dict(zip(G_MEASURES, (float(v) for v in g_res), strict=True))
