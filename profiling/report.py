"""The report files of `mlvos profile` (report.json, CSVs, plots), its text tables, and the
comparison of two reports (`mlvos profile compare`, which also reads gpu-check reports).

numpy only at import time; matplotlib is imported by the plots.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import InputError
from mlvos.profiling.plots import plot_report, subtitle
from mlvos.runtime.spec import TIMED_STAGES

__all__ = [
    "DEVICE_STATS",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "STAGE_HEADER",
    "STAT_COLUMNS",
    "comparable_metrics",
    "compare_reports",
    "csv_text",
    "load_report",
    "stage_cells",
    "stage_columns",
    "stage_rows",
    "summary_table",
    "write_report",
]

REPORT_FORMAT = "mlvos-profile"
REPORT_VERSION = 1


# ---------------------------------------------------------------------------------- outputs
def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """CSV text with a header row; None -> empty cell, floats with 6 significant digits."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


# CSV columns of a summarize() result in stages.csv and gpu_check.csv: {column: summarize key}.
STAT_COLUMNS = {
    "frames": "n",
    "mean_ms": "mean",
    "p50_ms": "p50",
    "p90_ms": "p90",
    "p99_ms": "p99",
    "fps": "fps",
}
DEVICE_STATS = ("mean", "p50", "p90", "p99")  # device-time columns of stages.csv


def stage_columns(device_stats: Sequence[str] = DEVICE_STATS) -> list[str]:
    """CSV header of stage_cells (same `device_stats`)."""
    return [*STAT_COLUMNS, *(f"device_{k}_ms" for k in device_stats), "gmacs", "tflops"]


def stage_cells(
    entry: dict[str, Any], stage: str, device_stats: Sequence[str] = DEVICE_STATS
) -> list[Any]:
    """CSV cells of one stage of a measured configuration (a sweep or gpu-check entry).

    Args:
        entry: a configuration with "wall" (and optionally "device", "gmacs", "tflops"):
            {stage: summarize() result} per clock, {stage: value} for the costs.
        stage: one of runtime.predictor.TIMED_STAGES.
        device_stats: summarize() keys of the device time to include (empty cells when the
            entry has no device time).

    Returns:
        The wall statistics (STAT_COLUMNS), the device statistics, GMACs and TFLOP/s.
    """
    wall, dev = entry["wall"][stage], (entry.get("device") or {}).get(stage) or {}
    return [
        *(wall[k] for k in STAT_COLUMNS.values()),
        *(dev.get(k) for k in device_stats),
        (entry.get("gmacs") or {}).get(stage),
        (entry.get("tflops") or {}).get(stage),
    ]


def stage_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One CSV row per (sweep, configuration, stage) (columns: STAGE_HEADER)."""
    rows = []
    for sweep in ("resolution_sweep", "object_sweep"):
        for e in report.get(sweep) or []:
            if "wall" not in e:
                continue
            for s in TIMED_STAGES:
                config = [sweep, e["resolution"], e["height"], e["width"], e["objects"], s]
                rows.append([*config, *stage_cells(e, s)])
    return rows


STAGE_HEADER = ["sweep", "resolution", "height", "width", "objects", "stage", *stage_columns()]


def write_report(report: dict[str, Any], out: str | os.PathLike, *, plots: bool = True) -> list:
    """Write report.json, stages.csv, memory_sweep.csv, long_run.csv and the PNG plots into
    `out`, each file atomically. Returns the written paths (plots are skipped with a message in
    the report when matplotlib is missing)."""
    from mlvos.fileio import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_text(out / "stages.csv", csv_text(STAGE_HEADER, stage_rows(report)))
    written.append(out / "stages.csv")
    ms = report.get("memory_sweep") or {}
    if ms.get("points"):
        rows = [
            [
                ms["resolution"],
                ms["objects"],
                p["valid_slots"],
                ms["capacity"],
                p["read_decoder"]["mean"],
                p["read_decoder"]["p50"],
                p["read_decoder"]["p90"],
                p["read_decoder"]["p99"],
                p["gmacs"],
                p["tflops"],
            ]
            for p in ms["points"]
        ]
        header = [
            "resolution",
            "objects",
            "valid_slots",
            "capacity",
            "mean_ms",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "gmacs",
            "tflops",
        ]
        atomic_write_text(out / "memory_sweep.csv", csv_text(header, rows))
        written.append(out / "memory_sweep.csv")
    lr = report.get("long_run") or {}
    if lr.get("per_frame_ms"):
        dev = lr.get("device_per_frame_ms") or [None] * len(lr["per_frame_ms"])
        # Frame 0 is the annotated frame; frames before lr["warmup"] are excluded from stats.
        rows = [
            [i, v, d, i < lr["warmup"]] for i, (v, d) in enumerate(zip(lr["per_frame_ms"], dev))
        ]
        atomic_write_text(
            out / "long_run.csv",
            csv_text(["frame", "total_ms", "device_total_ms", "warmup"], rows),
        )
        written.append(out / "long_run.csv")
    if plots:
        try:
            written += plot_report(report, out)
        except ImportError as e:
            report["plots_skipped"] = f"matplotlib is not installed ({e}); pip install matplotlib"
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=_json_default))
    written.append(out / "report.json")
    return written


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


# ---------------------------------------------------------------------------------- compare
def comparable_metrics(report: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Flatten a profile (or gpu-check) report to {metric: (value, unit)} for `compare`."""
    out: dict[str, tuple[float, str]] = {}
    if report.get("format") == REPORT_FORMAT:
        for sweep in ("resolution_sweep", "object_sweep"):
            for e in report.get(sweep) or []:
                if "wall" not in e:
                    continue
                tag = f"{e['resolution']} x{e['objects']}"
                if f"{tag} total mean" in out:
                    continue  # the object sweep repeats the first resolution's entry
                for s in TIMED_STAGES:
                    out[f"{tag} {s} mean"] = (e["wall"][s]["mean"], "ms")
                if e.get("device"):
                    out[f"{tag} device total mean"] = (e["device"]["total"]["mean"], "ms")
                out[f"{tag} total p90"] = (e["wall"]["total"]["p90"], "ms")
                out[f"{tag} FPS"] = (e["wall"]["total"]["fps"], "fps")
                if (e.get("tflops") or {}).get("total"):
                    out[f"{tag} TFLOP/s"] = (e["tflops"]["total"], "TFLOP/s")
        for p in (report.get("memory_sweep") or {}).get("points") or []:
            out[f"read+decode {p['valid_slots']} slots mean"] = (p["read_decoder"]["mean"], "ms")
        lr = report.get("long_run") or {}
        if lr.get("late_over_early") is not None:
            out["long run late/early"] = (lr["late_over_early"], "x")
            out["long run RSS growth"] = (lr.get("rss_growth_mb"), "MiB")
        mem = report.get("memory") or {}
        out["peak RSS"] = (mem.get("peak_rss_mb"), "MiB")
        if mem.get("peak_device_mb"):
            out["peak device memory"] = (mem["peak_device_mb"], "MiB")
    else:  # gpu-check report: per variant (version 2), or one flat list (version 1)
        configs = [
            {**e, "tag": f"{v} {'trt ' if e.get('backend') == 'trt' else ''}"}
            for v, part in (report.get("variants") or {}).items()
            for e in (part.get("configs") or []) + ((part.get("trt") or {}).get("configs") or [])
        ] or report.get("configs") or []
        for e in configs:
            if "wall" not in e:
                continue
            tag = f"{e.get('tag', '')}{e['precision']} {e['resolution']}"
            for s in TIMED_STAGES:
                st = (e.get("device") or e["wall"])[s]
                out[f"{tag} {s} mean"] = (st["mean"], "ms")
            out[f"{tag} FPS"] = (e["wall"]["total"]["fps"], "fps")
            out[f"{tag} peak device memory"] = (e.get("peak_device_mb"), "MiB")
    return {k: v for k, v in out.items() if v[0] is not None}


def compare_reports(a: dict[str, Any], b: dict[str, Any], *, names=("A", "B")) -> str:
    """Side-by-side table of the metrics two reports share, with B/A ratios."""
    ma, mb = comparable_metrics(a), comparable_metrics(b)
    keys = [k for k in ma if k in mb] + [k for k in mb if k not in ma]
    width = max([len(k) for k in keys] + [10])
    lines = [
        f"A: {subtitle(a)}",
        f"B: {subtitle(b)}",
        f"{'metric':<{width}} {names[0]:>12} {names[1]:>12} {'B/A':>8}  unit",
        "-" * (width + 44),
    ]
    for k in keys:
        va = ma.get(k, (None, ""))[0]
        vb, unit = mb.get(k, (None, ma.get(k, (0, ""))[1]))
        ratio = f"{vb / va:8.3f}" if va and vb is not None else f"{'-':>8}"
        fa = f"{va:12.3f}" if va is not None else f"{'-':>12}"
        fb = f"{vb:12.3f}" if vb is not None else f"{'-':>12}"
        lines.append(f"{k:<{width}} {fa} {fb} {ratio}  {unit}")
    return "\n".join(lines)


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report written by `mlvos profile` or `mlvos profile gpu-check`.

    Raises:
        InputError: the file is missing or not such a report.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read profile report {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") not in (REPORT_FORMAT, "mlvos-gpu-check"):
        raise InputError(
            f"{path} is not a report of `mlvos profile` or `mlvos profile gpu-check` "
            "(its 'format' field differs)"
        )
    return data


def object_slope(report: dict[str, Any]) -> dict[str, Any] | None:
    """The object sweep's per-object cost: least-squares slope of the mean ms/frame over the
    object counts, and each count's time over the smallest count's; None without two counts."""
    pts = sorted({e["objects"]: e["wall"]["total"]["mean"]
                  for e in report.get("object_sweep") or [] if "wall" in e}.items())
    if len(pts) < 2:
        return None
    xs = [float(k) for k, _ in pts]
    ys = [float(v) for _, v in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
             / sum((x - mx) ** 2 for x in xs))
    base_objects, base = pts[0]
    return {"ms_per_object": slope, "base_objects": base_objects, "base_ms": base,
            "ratio": {str(k): v / base for k, v in pts[1:]}}


def object_slope_text(report: dict[str, Any]) -> str | None:
    """One line: '+24.1 ms per added object; 2 objects 1.30x, 3 objects 1.60x of 1'."""
    sl = object_slope(report)
    if sl is None:
        return None
    ratios = ", ".join(f"{k} objects {r:.2f}x" for k, r in sl["ratio"].items())
    return (f"object sweep: {sl['ms_per_object']:+.1f} ms per added object; {ratios} of "
            f"{sl['base_objects']}")


def summary_table(report: dict[str, Any]) -> str:
    """A short text table of a profile report (printed at the end of `mlvos profile`)."""
    lines = [subtitle(report)]
    stages = "".join(f"{s[:12]:>13}" for s in TIMED_STAGES)
    head = f"{'config':<16}" + stages + f"{'FPS':>8}{'GMAC':>8}"
    lines += [head, "-" * len(head)]
    seen = set()
    for e in (report.get("resolution_sweep") or []) + (report.get("object_sweep") or []):
        if "wall" not in e or id(e) in seen:
            continue
        seen.add(id(e))
        gm = (e.get("gmacs") or {}).get("total")
        lines.append(
            f"{e['resolution'] + ' x' + str(e['objects']):<16}"
            + "".join(f"{e['wall'][s]['mean']:13.2f}" for s in TIMED_STAGES)
            + f"{e['wall']['total']['fps']:8.2f}"
            + (f"{gm:8.1f}" if gm else f"{'-':>8}")
        )
    chk = (report.get("checks") or {}).get("stage_sum") or {}
    if chk:
        lines.append(
            f"stage sum vs end to end: worst {100 * (chk['worst_rel_diff'] or 0):.2f}% "
            f"(tolerance {100 * chk['tolerance']:.0f}%): {'OK' if chk['ok'] else 'FAILED'}"
        )
    slope = object_slope_text(report)
    if slope:
        lines.append(slope)
    source = (report.get("videos") or {}).get("source")
    if source:
        lines.append(f"content: {source}")
    if report.get("schedule"):
        lines.append(report["schedule"])
    gemm = report.get("gemm") or {}
    rate = gemm.get("fp32_gflops") or gemm.get("fp16_gflops")
    if rate:
        first = next((e for e in report.get("resolution_sweep") or [] if "wall" in e), None)
        frac = (first or {}).get("gemm_fraction") or {}
        parts = ", ".join(f"{s} {100 * v:.0f}%" for s, v in frac.items() if v)
        lines.append(f"dense GEMM rate here: {rate:.0f} GFLOP/s ({gemm['source']}); achieved "
                     f"share of it at {first['resolution']} x{first['objects']}: {parts}"
                     if first else f"dense GEMM rate here: {rate:.0f} GFLOP/s")
    elif gemm.get("error"):
        lines.append(f"dense GEMM rate: not measured ({gemm['error']})")
    lr = report.get("long_run") or {}
    if lr.get("late_over_early") is not None:
        flat = "flat" if lr["flat"] else "NOT flat"
        lines.append(
            f"long run: late/early mean {lr['late_over_early']:.3f}, median "
            f"{lr['late_over_early_median']:.3f} ({flat}), RSS growth after warm-up "
            f"{lr['rss_growth_mb']:+.1f} MiB"
        )
    return "\n".join(lines)
