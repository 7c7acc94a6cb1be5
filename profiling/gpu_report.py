"""The output side of `mlvos profile gpu-check`: the CSV, the PNG plots and the final text table,
all built from the report dict that gpu_check fills (one part per variant)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from mlvos.profiling.gpu_numerics import label_agreement
from mlvos.profiling.plots import STAGE_COLORS, plot_stage_bars, pyplot, save_png
from mlvos.profiling.report import csv_text, stage_cells, stage_columns
from mlvos.runtime.spec import TIMED_STAGES

if TYPE_CHECKING:
    from mlvos.profiling.gpu_check import _Check

__all__ = [
    "all_configs",
    "final_table",
    "label_agreement",
    "section_ok",
    "write_csv",
    "write_plots",
]

logger = logging.getLogger(__name__)


def section_ok(entry: dict[str, Any]) -> bool:
    """A section that ran, or was skipped because something optional is absent (not for time)."""
    return entry.get("status") == "ok" or bool(entry.get("benign"))


def all_configs(report: dict[str, Any], key: str = "configs") -> list[dict[str, Any]]:
    """Every variant's `key` entries (configs or cuda_graphs), in variant order, each tagged
    with its variant; the TensorRT latency configs with key "trt"."""
    out = []
    for variant, part in (report.get("variants") or {}).items():
        entries = (part.get("trt") or {}).get("configs") if key == "trt" else part.get(key)
        out += [{**e, "variant": variant} for e in entries or []]
    return out


def _tag(c: dict[str, Any]) -> str:
    backend = "trt " if c.get("backend") == "trt" else ""
    return f"{c['variant']}\n{backend}{c['precision']}\n{c['resolution']}"


def write_plots(chk: _Check) -> None:
    try:
        plt = pyplot()
    except ImportError as e:
        chk.report["plots"] = f"skipped: matplotlib is not installed ({e})"
        return
    configs = [c for c in all_configs(chk.report) if "wall" in c]  # torch; trt in the CSV
    key = "device" if configs and configs[0].get("device") else "wall"
    if configs:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(configs) + 2), 5.0))
        plot_stage_bars(ax, [_tag(c) for c in configs], configs, key=key)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(
            f"{', '.join(chk.settings.variants)} on {chk.report['device'].get('gpu', 'cpu')}: "
            f"per-stage latency ({key} time, {configs[0]['objects']} object(s))",
            fontsize=10,
        )
        save_png(fig, chk.out / "gpu_latency.png")
        plt.close(fig)
    graphs = all_configs(chk.report, "cuda_graphs")
    if graphs:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(graphs) + 2), 5.0))
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
        ax.set_xticks(x, [_tag(g) for g in graphs], fontsize=7)
        ax.set_ylabel("ms per call (mean, CUDA events)")
        ax.set_yscale("log")  # paper and tiny differ by orders of magnitude
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("CUDA graphs off (light) vs on (dark)", fontsize=10)
        save_png(fig, chk.out / "gpu_cuda_graphs.png")
        plt.close(fig)


def write_csv(chk: _Check) -> None:
    from mlvos.fileio import atomic_write_text

    device_stats = ("mean", "p90")
    rows = []
    for c in all_configs(chk.report) + all_configs(chk.report, "trt"):
        for st in TIMED_STAGES:
            config = [c["variant"], c.get("backend", "torch"), c["precision"], c["resolution"]]
            config += [c["objects"], st]
            rows.append([*config, *stage_cells(c, st, device_stats), c.get("peak_device_mb")])
    header = ["variant", "backend", "precision", "resolution", "objects", "stage"]
    header += [*stage_columns(device_stats), "peak_device_mb"]
    atomic_write_text(chk.out / "gpu_check.csv", csv_text(header, rows))


def _iou(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _numerics_lines(variant: str, part: dict[str, Any]) -> list[str]:
    lines = []
    ag = part.get("agreement") or {}
    if ag.get("mean_iou") is not None:
        lines.append(
            f"{variant}: {ag['compared']} vs {ag['reference']} on the device: one-step mean IoU "
            f"{_iou(ag['one_step']['mean_iou'])} (min object "
            f"{_iou(ag['one_step']['min_object_iou'])}), propagated {_iou(ag['mean_iou'])}"
        )
    num = part.get("numerics") or {}
    for p, r in (num.get("compared") or {}).items():
        err = r["one_step"].get("obj_probs_max_abs")
        lines.append(
            f"{variant}: {p} {num['device']} vs cpu fp32: one-step mean IoU "
            f"{_iou(r['one_step']['mean_iou'])} (min object "
            f"{_iou(r['one_step']['min_object_iou'])}), propagated {_iou(r['mean_iou'])} (min "
            f"object {_iou(r['min_object_iou'])}), obj_probs max abs "
            + ("-" if err is None else f"{err:.2e}")
            + f", decisive mismatch {100 * r['one_step'].get('decisive_mismatch', 0):.2f}% of "
            f"{100 * r['one_step'].get('decisive_fraction', 0):.1f}%, {num['frames']} frames"
        )
    check = (part.get("trt") or {}).get("check")
    if check:
        lines.append(
            f"{variant}: trt fp16 engines vs fp32 graphs on onnxruntime (mlvos check): "
            + ("PASS" if check.get("passed") else "FAIL")
        )
    return lines


def final_table(report: dict[str, Any]) -> str:
    """The short table printed at the end of the check: one row per variant, backend,
    precision and resolution; then the numerics per variant and the sections not ok."""
    graphs = {
        (g["variant"], g["precision"], g["resolution"]): g
        for g in all_configs(report, "cuda_graphs")
    }
    head = (
        f"{'variant':<8} {'precision':<9} {'res':<8} {'query':>8} {'read':>8} {'memory':>8} "
        f"{'e2e ms':>8} {'FPS':>7} {'FPS*':>7} {'peak MiB':>9} {'graph x':>8}"
    )
    lines = [head, "-" * len(head)]
    for c in all_configs(report) + all_configs(report, "trt"):
        t = c.get("device") or c["wall"]
        g = graphs.get((c["variant"], c["precision"], c["resolution"]))
        sp = (g or {}).get("stages", {}).get("read_decoder", {}).get("speedup")
        precision = ("trt " if c.get("backend") == "trt" else "") + c["precision"]
        if c.get("backend") == "trt":
            sp = None
        lines.append(
            f"{c['variant']:<8} {precision:<9} {c['resolution']:<8} "
            f"{t['query_encoder']['mean']:8.2f} {t['read_decoder']['mean']:8.2f} "
            f"{t['memory_encoder']['mean']:8.2f} {c['wall']['total']['mean']:8.2f} "
            f"{c['wall']['total']['fps']:7.1f} {c.get('unsynced_fps') or float('nan'):7.1f} "
            f"{c.get('peak_device_mb') or float('nan'):9.0f} "
            + (f"{sp:8.2f}" if sp else f"{'-':>8}")
        )
    lines.append(
        "stage columns: device time (CUDA events) on a GPU, wall clock on the CPU and for trt; "
        "FPS* = without per-stage sync; graph x = read+decode speedup with CUDA graphs"
    )
    for variant, part in (report.get("variants") or {}).items():
        lines += _numerics_lines(variant, part)
    trt = report.get("trt") or {}
    if trt and not trt.get("available"):
        lines.append(f"TensorRT part skipped: {trt.get('reason')}")
    failed = [k for k, v in (report.get("sections") or {}).items() if not section_ok(v)]
    lines.append(f"status: {report.get('status')}; sections not ok: {failed or 'none'}")
    return "\n".join(lines)
