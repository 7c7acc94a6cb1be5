"""Numerics of `mlvos profile gpu-check` (profiling.gpu_check): FP16-vs-FP32 agreement of the
label maps on the device, and both device precisions against the torch backend on the CPU in
FP32, the reference.

Label maps are compared by IoU per object, two ways (gpu_torch.video_labels): propagated, and
one step (every frame read against a memory of the true first masks). With random weights the
soft probabilities sit near ties, so a flipped pixel grows when propagated and the propagated
IoU says little; the one-step IoU, the label mismatch on decisive pixels (top-two probability
margin > DECISIVE_MARGIN) and the max abs error of obj_probs at one step are the numerical
comparison proper. All are reported.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from mlvos.data.metrics import decisive_agreement
from mlvos.profiling.measure import SyntheticVideo

if TYPE_CHECKING:
    from mlvos.profiling.gpu_check import _Check

logger = logging.getLogger(__name__)

# Top-two probability margin above which a pixel's label is "decisive" (_decisive).
DECISIVE_MARGIN = 0.05
NEAR_TIE_NOTE = (
    "random weights: soft probabilities sit near ties, so propagated flips can grow from frame "
    "to frame; one_step reads every frame against the same true-mask memory; where even those "
    "sit near ties, decisive_mismatch (frame 1) and obj_probs_max_abs are the numbers to read"
)


def label_agreement(a: list[np.ndarray], b: list[np.ndarray], ids: list[int]) -> dict[str, Any]:
    """IoU per object between two label-map sequences (frame 0, the given mask, excluded).

    Args:
        a, b: (H, W) uint8 label maps, frame 0 first; the shorter sequence sets the length.
        ids: object ids to compare (an id absent from both maps of a frame counts IoU 1).

    Returns:
        frames and objects compared; mean_iou (of the per-frame means over objects),
        min_frame_iou, min_object_iou (worst object in any frame), per_object_mean_iou
        {id: mean over frames}, pixel_agreement (share of equal pixels), per_frame_iou.
    """
    per_frame, pixels = [], []
    per_object: dict[int, list[float]] = {i: [] for i in ids}
    for la, lb in zip(a[1:], b[1:]):
        ious = []
        for i in ids:
            ma, mb = la == i, lb == i
            union = np.count_nonzero(ma | mb)
            iou = 1.0 if union == 0 else np.count_nonzero(ma & mb) / union
            ious.append(iou)
            per_object[i].append(float(iou))
        per_frame.append(float(np.mean(ious)))
        pixels.append(float(np.mean(la == lb)))
    every = [v for vs in per_object.values() for v in vs]
    return {
        "frames": len(per_frame),
        "objects": len(ids),
        "mean_iou": float(np.mean(per_frame)) if per_frame else None,
        "min_frame_iou": float(np.min(per_frame)) if per_frame else None,
        "min_object_iou": float(np.min(every)) if every else None,
        "per_object_mean_iou": {str(i): float(np.mean(v)) for i, v in per_object.items() if v},
        "pixel_agreement": float(np.mean(pixels)) if pixels else None,
        "per_frame_iou": per_frame,
    }


def _compare(ref: dict[str, Any], got: dict[str, Any], ids: list[int]) -> dict[str, Any]:
    """`got` (gpu_torch.video_labels) against `ref`, propagated and one step."""
    result = label_agreement(ref["propagated"], got["propagated"], ids)
    result["one_step"] = label_agreement(ref["one_step"], got["one_step"], ref["slots"])
    if ref.get("probs") is not None and got.get("probs") is not None:
        diff = np.abs(ref["probs"].astype(np.float32) - got["probs"].astype(np.float32))
        result["one_step"]["obj_probs_max_abs"] = float(diff.max())
        result["one_step"]["obj_probs_mean_abs"] = float(diff.mean())
        result["one_step"].update(_decisive(ref["probs"], ref["one_step"][1], got["one_step"][1]))
    return result


def _decisive(probs: np.ndarray, ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Label mismatch at one step (frame 1) on the pixels whose top-two reference probabilities
    (background included) differ by more than DECISIVE_MARGIN: near-ties flip under any
    rounding, decisive pixels should not."""
    m = decisive_agreement(ref, got, probs, DECISIVE_MARGIN)
    return {k: m[k] for k in ("decisive_fraction", "decisive_mismatch")}


def _ids(video: SyntheticVideo) -> list[int]:
    return [int(i) for i in np.unique(video.first_label) if i]


def agreement_report(
    chk: _Check, variant: str, labels: dict[str, dict], video: SyntheticVideo
) -> None:
    """FP16 vs FP32 label maps on the check's device, into report["variants"][variant]."""
    s = chk.settings
    entry = chk.report["variants"][variant]
    if len(s.precisions) >= 2:
        a, b = s.precisions[-1], s.precisions[0]  # reference (fp32) first
    else:
        a = b = s.precisions[0]
    if a not in labels or b not in labels:
        entry["agreement"] = {"status": "missing label runs", "have": sorted(labels)}
        return
    result = _compare(labels[a], labels[b], _ids(video))
    result.update({"reference": a, "compared": b, "resolution": s.resolutions[0]})
    result["note"] = NEAR_TIE_NOTE
    if a == b:
        result["note"] = "one precision only (CPU): the comparison checks the code path only"
    entry["agreement"] = result
    logger.info(
        f"[{chk._t()}] {variant} agreement {b} vs {a}: propagated mean IoU "
        f"{result['mean_iou']:.4f}, one-step mean IoU {result['one_step']['mean_iou']:.4f}, "
        f"pixels {100 * result['pixel_agreement']:.2f}% ({result['frames']} frames)"
    )


def cpu_numerics(
    chk: _Check,
    variant: str,
    model: Any,
    labels: dict[str, dict],
    video: SyntheticVideo,
    budget: float,
) -> None:
    """Label maps of the label video from the torch backend on the CPU in FP32 (`model` as is),
    compared with each device precision's, into report["variants"][variant]["numerics"].

    The reference takes as many frames as `budget` allows (at least 3, frame 0 included, of
    `agreement_frames`; the paper variant reads about a frame a second at 480p on 16 cores) and
    is compared with the same first frames of the device's run: propagation is causal and
    one-step reads are independent, so a prefix of the device's run is what a shorter run would
    have given.
    """
    from mlvos.profiling.gpu_torch import video_labels
    from mlvos.runtime.backends.torch_backend import TorchRunner

    s = chk.settings
    entry = chk.report["variants"][variant]
    if not labels:
        entry["numerics"] = {"status": "missing label runs", "have": []}
        return
    t0 = time.perf_counter()
    with TorchRunner(model, device="cpu", precision="fp32", capacity=s.capacity) as runner:
        ref = video_labels(runner, video, s.agreement_frames, t0 + budget)
    ids = _ids(video)
    result: dict[str, Any] = {
        "reference": "torch backend, CPU, fp32",
        "device": s.device,
        "resolution": s.resolutions[0],
        "frames": len(ref["propagated"]) - 1,  # compared: frame 0 is the given mask
        "reference_seconds": time.perf_counter() - t0,
        "compared": {p: _compare(ref, got, ids) for p, got in labels.items()},
        "note": NEAR_TIE_NOTE,
    }
    if not s.device.startswith("cuda"):
        result["note"] = "device is the CPU: the comparison checks the code path only"
    entry["numerics"] = result
    for p, r in result["compared"].items():
        err = r["one_step"].get("obj_probs_max_abs")
        logger.info(
            f"[{chk._t()}] {variant} {p} {s.device} vs cpu fp32: one-step mean IoU "
            f"{r['one_step']['mean_iou']:.4f} (min object {r['one_step']['min_object_iou']:.4f}), "
            f"propagated {r['mean_iou']:.4f}, obj_probs max abs "
            + ("-" if err is None else f"{err:.2e}")
            + f", decisive mismatch {100 * r['one_step'].get('decisive_mismatch', 0):.2f}%"
            + f" ({result['frames']} frames)"
        )
