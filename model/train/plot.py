"""Loss curves from a run's log.jsonl (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mlvos.errors import InputError


def read_log(path: str | os.PathLike) -> list[dict]:
    """Step records of a log.jsonl, in step order; a step logged twice (a run resumed from an
    earlier checkpoint) keeps its latest record. Event lines (resume, end) are skipped.

    Raises:
        InputError: the file is missing, not JSON lines, or holds no step with a loss.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"log {path} does not exist; `mlvos train` writes OUT/log.jsonl")
    by_step: dict[int, dict] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            # a killed run can leave a half-written last line; anything else is not our log
            if n == len(lines):
                continue
            raise InputError(f"{path}:{n} is not a JSON line; is this an mlvos log.jsonl?"
                             ) from None
        if isinstance(rec, dict) and "step" in rec and "loss" in rec:
            by_step[int(rec["step"])] = rec
    if not by_step:
        raise InputError(f"{path} holds no step records with a loss; train a few steps first")
    return [by_step[s] for s in sorted(by_step)]


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    out = np.empty(len(values), dtype=np.float64)
    avg, norm = 0.0, 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * float(v)
        norm = weight * norm + (1 - weight)
        out[i] = avg / norm
    return out


def plot_log(log: str | os.PathLike, out: str | os.PathLike, *, smoothing: float = 0.9,
             title: str | None = None) -> Path:
    """Draw loss (raw and smoothed) vs step, with stage boundaries, into a PNG (atomically).

    Raises:
        InputError: unreadable log (see read_log) or a smoothing outside [0, 1).
    """
    if not 0.0 <= smoothing < 1.0:
        raise InputError(f"smoothing must be in [0, 1), received {smoothing}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlvos.fileio import atomic_path

    recs = read_log(log)
    steps = np.array([r["step"] for r in recs])
    loss = np.array([r.get("loss_avg", r["loss"]) for r in recs], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    ax.plot(steps, smooth(loss, smoothing), color="tab:blue", linewidth=2,
            label=f"smoothed ({smoothing:g})")
    stages = sorted({r.get("stage", "") for r in recs} - {""})
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    if loss.min() > 0 and loss.max() / loss.min() > 20:
        ax.set_yscale("log")
    ax.set_title(title or f"{Path(log).parent.name or Path(log).name}: {', '.join(stages)}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
