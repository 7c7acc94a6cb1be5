"""PNG plots of a profile report (matplotlib, imported when a plot is drawn) and the helpers
gpu-check draws its own plots with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlvos.runtime.spec import TIMED_STAGES, WORK_STAGES

__all__ = [
    "STAGE_COLORS",
    "plot_report",
    "plot_stage_bars",
    "pyplot",
    "save_png",
    "subtitle",
]

# One color per stage in every plot (gpu-check's too).
STAGE_COLORS = {
    "preprocess": "#9e9e9e",
    "query_encoder": "#1f77b4",
    "read_decoder": "#d62728",
    "memory_encoder": "#2ca02c",
    "postprocess": "#ff7f0e",
    "total": "#000000",
}


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed).

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    """Write `fig` to `path` as PNG atomically (no half-written file on failure); returns path."""
    from mlvos.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def subtitle(report: dict[str, Any]) -> str:
    """ "variant | backend precision on device | timer: kind" of a report (plot titles, tables)."""
    m = report.get("model") or {}
    return (
        f"{m.get('variant', '?')} | {m.get('backend', '?')} {m.get('precision', '')} on "
        f"{m.get('device', '?')} | timer: {(report.get('timer') or {}).get('kind', '?')}"
    )


def _stage_lines(ax, entries: list[dict], xs: list, key: str = "wall") -> None:
    for s in TIMED_STAGES:
        ys = [(e.get(key) or e["wall"])[s]["mean"] for e in entries]
        lw, ms = (2.6, 7) if s == "total" else (1.4, 5)
        ax.plot(xs, ys, marker="o", lw=lw, ms=ms, color=STAGE_COLORS[s], label=s)
    ax.set_yscale("log")
    ax.set_ylabel("latency per frame, mean (ms, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_stage_bars(
    ax, labels: list[str], entries: list[dict], key: str = "wall", *, legend: bool = True
) -> None:
    """Stacked per-stage mean latency bars, one bar per entry, end-to-end mean marked."""
    bottom = np.zeros(len(entries))
    x = np.arange(len(entries))
    for s in WORK_STAGES:
        vals = np.array([(e.get(key) or e["wall"])[s]["mean"] or 0.0 for e in entries])
        ax.bar(x, vals, bottom=bottom, color=STAGE_COLORS[s], label=s, width=0.6)
        bottom += vals
    totals = [(e.get(key) or e["wall"])["total"]["mean"] for e in entries]
    ax.scatter(x, totals, marker="_", s=900, color="black", label="end to end", zorder=3)
    for xi, t in zip(x, totals):
        ax.annotate(
            f"{t:.1f}", (xi, t), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8
        )
    ax.set_xticks(x, labels)
    ax.set_xlim(-0.75, len(entries) - 0.25)
    ax.set_ylim(0, 1.15 * max([*totals, float(bottom.max())]))
    ax.set_ylabel("ms per frame (mean)")
    ax.grid(True, axis="y", alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="upper left")


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    """The five PNG plots of a profile report."""
    plt = pyplot()
    out = Path(out)
    paths = []
    sub = subtitle(report)
    res = [e for e in report.get("resolution_sweep") or [] if "wall" in e]
    if res:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        _stage_lines(
            ax, res, [f"{e['resolution']}\n{e['padded'][0]}x{e['padded'][1]}" for e in res]
        )
        ax.set_xlabel("resolution (padded size)")
        ax.set_title(f"Latency vs resolution ({res[0]['objects']} object(s))\n{sub}", fontsize=10)
        paths.append(save_png(fig, out / "latency_vs_resolution.png"))
        plt.close(fig)
    objs = [e for e in report.get("object_sweep") or [] if "wall" in e]
    if objs:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        _stage_lines(ax, objs, [e["objects"] for e in objs])
        ax.set_xlabel("objects")
        ax.set_xticks([e["objects"] for e in objs])
        from mlvos.profiling.report import object_slope_text  # report imports this module

        slope = object_slope_text(report) or ""
        ax.set_title(f"Latency vs objects ({objs[0]['resolution']})\n{slope}\n{sub}",
                     fontsize=9)
        paths.append(save_png(fig, out / "latency_vs_objects.png"))
        plt.close(fig)
    ms = report.get("memory_sweep") or {}
    if ms.get("points"):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        ks = [p["valid_slots"] for p in ms["points"]]
        color = STAGE_COLORS["read_decoder"]
        mean = [p["read_decoder"]["mean"] for p in ms["points"]]
        p90 = [p["read_decoder"]["p90"] for p in ms["points"]]
        ax.plot(ks, mean, marker="o", color=color, lw=2, label="mean")
        ax.plot(ks, p90, marker="^", color=color, lw=1, ls="--", label="p90")
        ax.set_ylim(0, max(p90) * 1.25)
        ax.set_xticks(ks)
        ax.set_xlabel(f"valid memory slots (bank capacity T = {ms['capacity']})")
        ax.set_ylabel("read+decode latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(
            f"Read+decode vs frames in memory ({ms['resolution']}, {ms['objects']} "
            f"object(s))\n{sub}",
            fontsize=10,
        )
        paths.append(save_png(fig, out / "latency_vs_memory.png"))
        plt.close(fig)
    lr = report.get("long_run") or {}
    if lr.get("per_frame_ms"):
        fig, ax = plt.subplots(figsize=(9, 4.8))
        y = lr["per_frame_ms"]
        ax.plot(range(len(y)), y, lw=1, color="#444444", label="end to end (wall)")
        if lr.get("device_per_frame_ms"):
            ax.plot(
                range(len(y)), lr["device_per_frame_ms"], lw=1, color="#1f77b4", label="device busy"
            )
        ax.axvspan(
            -0.5, lr["warmup"] - 0.5, color="#cccccc", alpha=0.5, label="annotated frame + warm-up"
        )
        for key, color in (("early", "#2ca02c"), ("late", "#d62728")):
            w = lr[key]
            ax.hlines(
                w["mean_ms"],
                w["first"],
                w["last"],
                color=color,
                lw=3,
                label=f"{key} window mean {w['mean_ms']:.1f} ms",
            )
        timed = y[lr["warmup"] :]
        ax.set_ylim(0, max(timed) * 1.3 if timed else None)
        ax.set_xlabel("frame index")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title(
            f"Latency vs frame index ({lr['resolution']}, {lr['objects']} object(s)): "
            f"late/early mean {lr['late_over_early']:.3f}, median "
            f"{lr['late_over_early_median']:.3f}\n{sub}",
            fontsize=10,
        )
        paths.append(save_png(fig, out / "latency_vs_frame.png"))
        plt.close(fig)
    if res:
        extra = len(objs) > 1  # one object count is the first resolution's bar again
        fig, axes = plt.subplots(
            1, 2 if extra else 1, figsize=(12 if extra else 7, 4.8), squeeze=False
        )
        plot_stage_bars(axes[0][0], [e["resolution"] for e in res], res, legend=False)
        axes[0][0].set_title(
            f"per stage vs resolution ({res[0]['objects']} object(s))", fontsize=10
        )
        if extra:
            plot_stage_bars(axes[0][1], [f"{e['objects']} obj" for e in objs], objs, legend=False)
            axes[0][1].set_title(f"per stage vs objects ({objs[0]['resolution']})", fontsize=10)
        handles, names = axes[0][0].get_legend_handles_labels()
        ncol = len(names) if extra else 3
        fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        fig.suptitle(f"Per-stage latency (stacked means)\n{sub}", fontsize=10)
        fig.tight_layout(rect=(0, 0.06 if extra else 0.1, 1, 1))
        paths.append(save_png(fig, out / "stage_breakdown.png"))
        plt.close(fig)
    return paths
