"""The output side of `mlvos profile gpu-check`: FP16-vs-FP32 label agreement, the CSV, the PNG
plots and the final text table, all built from the report dict that gpu_check fills."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from mlvos.profiling.measure import SyntheticVideo
from mlvos.profiling.plots import STAGE_COLORS, plot_stage_bars, pyplot, save_png
from mlvos.profiling.report import csv_text, stage_cells, stage_columns
from mlvos.runtime.spec import TIMED_STAGES

if TYPE_CHECKING:
    from mlvos.profiling.gpu_check import _Check

logger = logging.getLogger(__name__)


def label_agreement(a: list[np.ndarray], b: list[np.ndarray], ids: list[int]) -> dict[str, Any]:
    """IoU per object between two label-map sequences (frame 0, the given mask, excluded)."""
    per_frame, pixels = [], []
    for la, lb in zip(a[1:], b[1:]):
        ious = []
        for i in ids:
            ma, mb = la == i, lb == i
            union = np.count_nonzero(ma | mb)
            ious.append(1.0 if union == 0 else np.count_nonzero(ma & mb) / union)
        per_frame.append(float(np.mean(ious)))
        pixels.append(float(np.mean(la == lb)))
    return {
        "frames": len(per_frame),
        "objects": len(ids),
        "mean_iou": float(np.mean(per_frame)) if per_frame else None,
        "min_frame_iou": float(np.min(per_frame)) if per_frame else None,
        "pixel_agreement": float(np.mean(pixels)) if pixels else None,
        "per_frame_iou": per_frame,
    }


def _agreement_report(chk: _Check, agreement: dict[str, dict], video: SyntheticVideo) -> None:
    s = chk.settings
    ids = [int(i) for i in np.unique(video.first_label) if i]
    if len(s.precisions) >= 2:
        a, b = s.precisions[-1], s.precisions[0]  # reference (fp32) first
    else:
        a = b = s.precisions[0]
    if a not in agreement or b not in agreement:
        chk.report["agreement"] = {"status": "missing label runs", "have": sorted(agreement)}
        return
    result = label_agreement(agreement[a]["propagated"], agreement[b]["propagated"], ids)
    result["one_step"] = label_agreement(
        agreement[a]["one_step"], agreement[b]["one_step"], agreement[a]["slots"]
    )
    result.update({"reference": a, "compared": b, "resolution": s.resolutions[0]})
    result["note"] = (
        "random weights: soft probabilities sit near ties, so propagated FP16 flips can grow "
        "from frame to frame; one_step reads every frame against the same true-mask memory"
    )
    if a == b:
        result["note"] = "one precision only (CPU): the comparison checks the code path only"
    chk.report["agreement"] = result
    logger.info(
        f"[{chk._t()}] agreement {b} vs {a}: propagated mean IoU {result['mean_iou']:.4f}, "
        f"one-step mean IoU {result['one_step']['mean_iou']:.4f}, pixels "
        f"{100 * result['pixel_agreement']:.2f}% ({result['frames']} frames)"
    )


def _plots(chk: _Check) -> None:
    try:
        plt = pyplot()
    except ImportError as e:
        chk.report["plots"] = f"skipped: matplotlib is not installed ({e})"
        return
    configs = [c for c in chk.report["configs"] if "wall" in c]
    key = "device" if configs and configs[0].get("device") else "wall"
    if configs:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(configs) + 2), 4.8))
        plot_stage_bars(
            ax, [f"{c['precision']}\n{c['resolution']}" for c in configs], configs, key=key
        )
        ax.set_title(
            f"{chk.settings.variant} on {chk.report['device'].get('gpu', 'cpu')}: "
            f"per-stage latency ({key} time, {configs[0]['objects']} object(s))",
            fontsize=10,
        )
        save_png(fig, chk.out / "gpu_latency.png")
        plt.close(fig)
    graphs = chk.report["cuda_graphs"]
    if graphs:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(graphs) + 2), 4.8))
        x = np.arange(len(graphs))
        for j, (stage, mode) in enumerate(
            [(st, m) for st in ("query_encoder", "read_decoder") for m in ("eager", "graph")]
        ):
            vals = [g["stages"].get(stage, {}).get(mode, {}).get("mean") or 0 for g in graphs]
            ax.bar(
                x + (j - 1.5) * 0.2,
                vals,
                0.2,
                color=STAGE_COLORS[stage],
                alpha=1.0 if mode == "graph" else 0.45,
                label=f"{stage} {mode}",
            )
        ax.set_xticks(x, [f"{g['precision']}\n{g['resolution']}" for g in graphs])
        ax.set_ylabel("ms per call (mean, CUDA events)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("CUDA graphs off (light) vs on (dark)", fontsize=10)
        save_png(fig, chk.out / "gpu_cuda_graphs.png")
        plt.close(fig)


def _csv(chk: _Check) -> None:
    from mlvos.fileio import atomic_write_text

    device_stats = ("mean", "p90")
    rows = []
    for c in chk.report["configs"]:
        for st in TIMED_STAGES:
            config = [c["precision"], c["resolution"], c["objects"], st]
            rows.append([*config, *stage_cells(c, st, device_stats), c.get("peak_device_mb")])
    header = ["precision", "resolution", "objects", "stage"]
    header += [*stage_columns(device_stats), "peak_device_mb"]
    atomic_write_text(chk.out / "gpu_check.csv", csv_text(header, rows))


def final_table(report: dict[str, Any]) -> str:
    """The short table printed at the end of the check."""
    graphs = {(g["precision"], g["resolution"]): g for g in report.get("cuda_graphs") or []}
    head = (
        f"{'precision':<9} {'res':<8} {'query':>8} {'read':>8} {'memory':>8} {'e2e ms':>8} "
        f"{'FPS':>7} {'FPS*':>7} {'peak MiB':>9} {'graph x':>8}"
    )
    lines = [head, "-" * len(head)]
    for c in report.get("configs") or []:
        t = c.get("device") or c["wall"]
        g = graphs.get((c["precision"], c["resolution"]))
        sp = (g or {}).get("stages", {}).get("read_decoder", {}).get("speedup")
        lines.append(
            f"{c['precision']:<9} {c['resolution']:<8} {t['query_encoder']['mean']:8.2f} "
            f"{t['read_decoder']['mean']:8.2f} {t['memory_encoder']['mean']:8.2f} "
            f"{c['wall']['total']['mean']:8.2f} {c['wall']['total']['fps']:7.1f} "
            f"{c.get('unsynced_fps') or float('nan'):7.1f} "
            f"{c.get('peak_device_mb') or float('nan'):9.0f} "
            + (f"{sp:8.2f}" if sp else f"{'-':>8}")
        )
    lines.append(
        "stage columns: device time (CUDA events) on a GPU, wall clock on the CPU; "
        "FPS* = without per-stage sync; graph x = read+decode speedup with CUDA graphs"
    )
    ag = report.get("agreement") or {}
    if ag.get("mean_iou") is not None:
        lines.append(
            f"mask agreement {ag['compared']} vs {ag['reference']}: mean IoU propagated "
            f"{ag['mean_iou']:.4f}, one-step {ag['one_step']['mean_iou']:.4f}; pixels "
            f"{100 * ag['pixel_agreement']:.2f}%"
        )
    failed = [
        k
        for k, v in (report.get("sections") or {}).items()
        if not str(v.get("status", "")).startswith(("ok", "skipped: needs"))
    ]
    lines.append(f"status: {report.get('status')}; sections not ok: {failed or 'none'}")
    return "\n".join(lines)
