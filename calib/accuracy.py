"""Accuracy of the INT8 graphs: FP32 and INT8 propagation (onnxruntime CPU, which executes Q/DQ
graphs) over a DAVIS-layout validation set, J&F of each against the ground truth (the DAVIS 2017
evaluator, mlvos.data.evaluate), and the per-frame agreement of the two (label_map_iou).

Both runs use the same frame loop (VideoPredictor, same memory schedule), so every difference
comes from the graphs. The predictions are kept as PNG folders (pred/fp32, pred/int8 in --out)
so `mlvos eval` can re-score them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.logs import stamped

logger = logging.getLogger(__name__)


def _propagate(runner, seq, mem_every: int) -> list[np.ndarray]:
    from mlvos.runtime.predictor import propagate

    frames = (seq.read_frame(t) for t in range(len(seq)))
    return list(propagate(runner, frames, seq.first_mask(), mem_every=mem_every))


def _write(folder: Path, seq, labels: list[np.ndarray]) -> None:
    from mlvos.palette import encode_mask

    out = folder / seq.name
    out.mkdir(parents=True, exist_ok=True)
    for path, lab in zip(seq.frames, labels, strict=True):
        (out / f"{Path(path).stem}.png").write_bytes(encode_mask(lab))


def _round(v: float) -> float:
    return round(float(v), 6)


def accuracy_report(
    runners: dict[str, Any],
    ds,
    names: Sequence[str],
    pred_dir: str | Path,
    *,
    mem_every: int,
) -> dict[str, Any]:
    """Propagate `names` of `ds` with each runner ({"fp32": r, "int8": r}, opened), score them.

    Returns:
        {"jf": {precision: J&F-Mean}, "j": ..., "f": ..., "jf_drop_points" (100 x (fp32 -
        int8)), "iou_int8_vs_fp32": {"mean", "min", "per_sequence": {seq: [per-frame IoU of
        frames 1..n-1]}}, "sequences", "frames", "predictions" (folder)}.
    """
    from mlvos.data.evaluate import evaluate_folders
    from mlvos.data.metrics import label_map_iou
    from mlvos.fileio import atomic_dir

    pred_dir = Path(pred_dir)
    ious: dict[str, list[float]] = {}
    frames = 0
    with atomic_dir(pred_dir, force=True) as tmp:
        for name in names:
            seq = ds[name]
            labels = {p: _propagate(r, seq, mem_every) for p, r in runners.items()}
            for p, lab in labels.items():
                _write(tmp / p, seq, lab)
            if "fp32" in labels and "int8" in labels:
                ious[name] = [
                    _round(label_map_iou(a, b))
                    for a, b in zip(labels["fp32"][1:], labels["int8"][1:], strict=True)
                ]
            frames += len(seq)
            msg = f"propagated {name} ({len(seq)} frames)"
            if name in ious:
                msg += f": int8 vs fp32 mean IoU {np.mean(ious[name]):.4f}"
            logger.info(stamped(msg))
    scores = {
        p: evaluate_folders(ds.mask_dir, pred_dir / p, list(names)).summary() for p in runners
    }
    report: dict[str, Any] = {
        "dataset": {"root": str(Path(ds.root).resolve()), "split": ds.split},
        "sequences": list(names),
        "frames": frames,
        "jf": {p: _round(s["J&F-Mean"]) for p, s in scores.items()},
        "j": {p: _round(s["J-Mean"]) for p, s in scores.items()},
        "f": {p: _round(s["F-Mean"]) for p, s in scores.items()},
        "predictions": str(pred_dir),
        "scorer": "mlvos.data.evaluate.evaluate_folders (DAVIS 2017 semi-supervised)",
    }
    if "fp32" in scores and "int8" in scores:
        report["jf_drop_points"] = _round(
            100.0 * (scores["fp32"]["J&F-Mean"] - scores["int8"]["J&F-Mean"])
        )
        every = [v for per in ious.values() for v in per]
        report["iou_int8_vs_fp32"] = {
            "mean": _round(np.mean(every)) if every else 1.0,
            "min": _round(min(every)) if every else 1.0,
            "per_sequence": ious,
        }
    return report
