"""`mlvos benchmark`: one table that answers "which backend and precision should I ship?".

For an export directory, one row per backend x precision this machine can run (the torch
reference from the export's checkpoint, onnxruntime on every precision of the export, TensorRT
where it and a GPU are usable), each with:

- size on disk: MB of the graphs of that precision (torch: the checkpoint; trt: the engines);
- accuracy: J&F (DAVIS 2017 protocol, mlvos.data.evaluate) of first-frame-mask propagation over
  a DAVIS-layout validation set, each sequence cut to its first `max_frames` frames;
- speed: end-to-end ms/frame p50 / p90 and FPS (1000 / mean) of VideoPredictor at one
  resolution and object count, after a warm-up, on natural frames: a sequence of the validation
  set with enough objects, resized (profiling.measure.run_video drives the predictor);
- memory: peak RSS of the row's process after loading and the timed run (before the J&F pass),
  and peak device memory where the backend reports it.

Every row runs in a fresh subprocess (`python -m mlvos.profiling.benchmark SPEC RESULT`: the
worker, benchmark_worker.py), so one backend's allocations and imports never count in another's
peak memory. Rows that cannot run (a precision the export lacks, TensorRT without a GPU) are
rows too, with the reason and the command that fixes it. Outputs: a markdown table
(markdown_table), and table.md, table.csv and table.json (write_tables, each written atomically).

numpy only at import time; the backends, torch and the data readers are imported by the worker.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import DatasetError, InputError
from mlvos.fileio import atomic_write_text, stable_json
from mlvos.logs import clock, stamped
from mlvos.profiling.benchmark_worker import files_mb, worker_main
from mlvos.runtime.backends import BACKENDS
from mlvos.runtime.spec import (
    Graph,
    Precision,
    parse_device,
    parse_resolution,
    resize_bilinear,
    resize_nearest,
)

__all__ = [
    "BENCHMARK_FORMAT",
    "BENCHMARK_VERSION",
    "COLUMNS",
    "TABLE_FILES",
    "BenchmarkConfig",
    "default_data",
    "ensure_export",
    "markdown_table",
    "run_benchmark",
    "write_tables",
]

BENCHMARK_FORMAT = "mlvos-benchmark"
BENCHMARK_VERSION = 1
TABLE_FILES = ("table.md", "table.csv", "table.json")
# Where `mlvos demo` (default --cache) writes its export and natural validation videos.
DEMO_EXPORT = Path(".cache/demo/export")
DEMO_DATA_GLOB = ".cache/demo/natural-*"
# Row fields as CSV columns, in table order (J&F values are fractions, as in `mlvos eval`).
COLUMNS = (
    "backend", "precision", "status", "size_mb", "jf", "j", "f", "p50_ms", "p90_ms", "fps",
    "peak_rss_mb", "peak_device_mb", "load_s", "seconds", "note",
)
STATUSES = ("ok", "skipped", "failed")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchmarkConfig:
    """What `run_benchmark` measures.

    Args:
        model: export directory (manifest.json).
        data: DAVIS-layout validation set (JPEGImages/480p, Annotations/480p, ImageSets).
        split: its ImageSets split.
        sequences: score only the first N sequences (None: all).
        max_frames: score each sequence on its first N frames (>= 3: DAVIS skips the first and
            last); None: whole sequences.
        resolution: timing frame size, "480p" | "720p" | "1080p" | "4k" | "HxW".
        objects: tracked objects in the timed run.
        warmup / iters: discarded / timed frames of the timed run (after the annotated one).
        device: "cpu" or "cuda[:N]" for the torch and ort rows (trt always runs on a GPU: N of
            cuda:N, else 0).
        threads: CPU threads of onnxruntime and torch (None: their defaults).
        backends / precisions: the rows to consider (every backend and graph precision).
        row_timeout_s: a row's process is killed after this many seconds.
        pred_dir: write each ok row's predictions there, <backend>-<precision>/<seq>/<frame>.png
            (score them with `mlvos eval` when max_frames covers whole sequences).
    """

    model: str
    data: str
    split: str = "val"
    sequences: int | None = None
    max_frames: int | None = 15
    resolution: str = "480p"
    objects: int = 2
    warmup: int = 3
    iters: int = 20
    device: str = "cpu"
    threads: int | None = None
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = Precision.GRAPHS
    row_timeout_s: float = 900.0
    pred_dir: str | None = None

    def check(self) -> None:
        """InputError naming the option for any value out of range."""
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise InputError(f"unknown backend(s) {unknown or '(none)'}; choose from "
                             f"{', '.join(BACKENDS)}")
        bad = [p for p in self.precisions if p not in Precision.GRAPHS]
        if bad or not self.precisions:
            raise InputError(f"unknown precision(s) {bad or '(none)'}; choose from "
                             f"{', '.join(Precision.GRAPHS)}")
        if self.max_frames is not None and self.max_frames < 3:
            raise InputError(f"--max-frames must be >= 3 (DAVIS scores all but the first and "
                             f"last frame), got {self.max_frames}")
        if self.sequences is not None and self.sequences < 1:
            raise InputError(f"--sequences must be >= 1, got {self.sequences}")
        if self.objects < 1 or self.iters < 1 or self.warmup < 0:
            raise InputError(f"need --objects >= 1, --iters >= 1, --warmup >= 0; got "
                             f"{self.objects}, {self.iters}, {self.warmup}")
        parse_resolution(self.resolution)
        parse_device(self.device)


@dataclass
class Row:
    """One backend x precision; the measured fields stay None unless status is "ok"."""

    backend: str
    precision: str
    status: str = "ok"
    note: str = ""
    size_mb: float | None = None
    jf: float | None = None
    j: float | None = None
    f: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    fps: float | None = None
    peak_rss_mb: float | None = None
    peak_device_mb: float | None = None
    load_s: float | None = None
    seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs
def default_data() -> Path | None:
    """The demo's natural validation set (`mlvos demo`), if one is there."""
    found = sorted(p for p in Path().glob(DEMO_DATA_GLOB) if (p / "ImageSets").is_dir())
    return found[0] if found else None


def ensure_export(checkpoint: str | os.PathLike, export_dir: str | os.PathLike) -> Path:
    """Export `checkpoint` (fp32 + fp16) into `export_dir`, unless an export of the same
    checkpoint (sha256) with both precisions is already there (int8 graphs added to it by
    `mlvos calib` are kept then)."""

    checkpoint, export_dir = Path(checkpoint), Path(export_dir)
    if not checkpoint.is_file():
        raise InputError(f"checkpoint {checkpoint} does not exist; create one with "
                         f"`mlvos model init --variant tiny --out {checkpoint}` or train one")
    from mlvos.errors import require

    api = require("mlvos.export.api", "export", "exporting --checkpoint for the benchmark")
    # As `mlvos demo`: per-graph gates; the end-to-end comparison of an untrained or briefly
    # trained model is decided by near ties that any rounding flips, so it is reported only.
    path, reused = api.cached_export(checkpoint, export_dir, precisions=("fp32", "fp16"),
                                     gate_end_to_end=False)
    logger.info(stamped(f"{'reusing' if reused else 'exported'} export {export_dir} of "
                        f"{checkpoint}"))
    return Path(path)


def _load_manifest(model: str | os.PathLike):
    from mlvos.runtime.manifest import Manifest

    path = Path(model)
    if path.is_file():
        raise InputError(f"{path} is a file; pass an export directory, or the checkpoint as "
                         "--checkpoint (it is exported into --export-dir first)")
    if not path.is_dir():
        raise InputError(f"export directory {path} does not exist; make one with `mlvos export "
                         f"--checkpoint CKPT --out {path}` (or `mlvos demo`), or pass "
                         "--checkpoint CKPT")
    return Manifest.load(path)


def _check_data(data: str | os.PathLike, split: str) -> list[str]:
    from mlvos.data.datasets import DavisDataset

    names = DavisDataset(data, split=split).sequences
    if not names:
        raise DatasetError(f"validation set {data} lists no sequence in split {split!r}")
    return names


# -------------------------------------------------------------------------------- rows
def _plan(config: BenchmarkConfig, manifest) -> list[Row | dict[str, Any]]:
    """Rows to run (dicts: worker specs) and rows that cannot run (Row, status "skipped")."""
    kind, index = parse_device(config.device)
    export = manifest.root
    have = set(manifest.precisions)
    plan: list[Row | dict[str, Any]] = []

    def spec(backend: str, precision: str, device: str, size_mb: float | None) -> dict:
        return {"backend": backend, "precision": precision, "device": device,
                "size_mb": size_mb}

    if "torch" in config.backends:
        ckpt = manifest.checkpoint_path
        # fp32 is the reference; half precision of torch only where it is meant to run (CUDA).
        wanted = [p for p in ("fp32", "fp16") if p in config.precisions
                  and (p == "fp32" or kind == "cuda")]
        for p in wanted:
            if importlib.util.find_spec("torch") is None:
                plan.append(Row("torch", p, "skipped", "torch is not installed: pip install "
                                "'mlvos[train]' (plus a torch build for this machine)"))
            elif ckpt is None or not ckpt.is_file():
                plan.append(Row("torch", p, "skipped", f"{export} holds no checkpoint file; "
                                "re-export it with `mlvos export`"))
            else:
                plan.append(spec("torch", p, config.device, files_mb([ckpt])))
    if "ort" in config.backends:
        for p in (p for p in Precision.GRAPHS if p in config.precisions):
            if importlib.util.find_spec("onnxruntime") is None:
                plan.append(Row("ort", p, "skipped",
                                "onnxruntime is not installed: pip install 'mlvos[ort]'"))
            elif p in have:
                files = [manifest.graph(g, p, verify=False).path for g in Graph.ALL]
                plan.append(spec("ort", p, config.device, files_mb(files)))
            else:
                plan.append(Row("ort", p, "skipped", _absent(p, manifest)))
    if "trt" in config.backends:
        from mlvos.profiling.check_candidates import resolve_backend

        chosen, why = resolve_backend("auto", index if kind == "cuda" else 0)
        if chosen != "trt":
            plan.append(Row("trt", "-", "skipped", f"TensorRT not usable here: {why}"))
        else:
            for p in (p for p in Precision.GRAPHS if p in config.precisions):
                if p in have:
                    plan.append(spec("trt", p, f"cuda:{index if kind == 'cuda' else 0}", None))
                else:
                    plan.append(Row("trt", p, "skipped", _absent(p, manifest)))
    return plan


def _absent(precision: str, manifest) -> str:
    """Why a precision has no row, and the command that adds it."""
    export = manifest.root
    if precision == "int8":
        return (f"not calibrated: run `mlvos calib --model {export} --data CALIB_SET "
                f"--out {export}/calib` (or `make calib CALIB_EXPORT={export}`)")
    source = (manifest.data.get("checkpoint") or {}).get("source")
    ckpt = source if source and Path(source).is_file() else "CKPT"
    return (f"not exported: run `mlvos export --checkpoint {ckpt} --out {export} --precision "
            f"fp32 {precision} --force`")


def _timing_clip(config: BenchmarkConfig, names: list[str], out: Path) -> dict[str, Any]:
    """Natural frames for the timed run: the first sequence of the validation set with at least
    `objects` objects in its first mask (else the one with the most), its `objects` largest
    objects relabelled 1..k, frames resized to the timing resolution and played forwards then
    backwards as long as needed. Saved to `out` (frames.npy, label.npy) for every worker."""
    from mlvos.data.datasets import DavisDataset

    ds = DavisDataset(config.data, split=config.split)
    best = None
    for name in names:
        mask = ds[name].first_mask()
        ids, area = np.unique(mask[mask > 0], return_counts=True)
        if best is None or len(ids) > len(best[1]):
            best = (name, ids[np.argsort(-area, kind="stable")])
        if len(ids) >= config.objects:
            break
    name, ids = best
    keep = [int(i) for i in ids[: config.objects]]
    if not keep:
        raise DatasetError(f"no sequence of {config.data} has an object in its first mask")
    seq = ds[name]
    label, h, w = parse_resolution(config.resolution)
    mask = seq.first_mask()
    first = np.zeros_like(mask)
    for k, i in enumerate(keep, start=1):
        first[mask == i] = k
    n = len(seq)
    period = max(1, 2 * n - 2)  # 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...
    order = [t % period if t % period < n else period - t % period
             for t in range(1 + config.warmup + config.iters)]
    cache: dict[int, np.ndarray] = {}
    frames = []
    for t in order:
        if t not in cache:
            cache[t] = resize_bilinear(seq.read_frame(t), h, w)
        frames.append(cache[t])
    np.save(out / "frames.npy", np.stack(frames))
    np.save(out / "label.npy", resize_nearest(first, h, w))
    if len(keep) < config.objects:
        logger.warning(f"no first mask of {config.data} has {config.objects} objects; timing "
                       f"with {len(keep)} ({name})")
    return {"resolution": label, "height": h, "width": w, "objects": len(keep),
            "sequence": name, "source": str(config.data), "warmup": config.warmup,
            "iters": config.iters}


def _run_row(spec: dict[str, Any], work: Path, timeout_s: float) -> Row:
    """Run one row in a fresh interpreter; its result JSON, or a failed Row."""
    tag = f"{spec['backend']}-{spec['precision']}"
    spec_path, result_path = work / f"{tag}.spec.json", work / f"{tag}.result.json"
    atomic_write_text(spec_path, stable_json(spec))
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as mlvos.cli.main: no spin-waiting threads
    cmd = [sys.executable, "-m", "mlvos.profiling.benchmark", str(spec_path), str(result_path)]
    row = Row(spec["backend"], spec["precision"], "failed", size_mb=spec.get("size_mb"))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        row.note = f"timed out after {timeout_s:.0f} s (raise --row-timeout)"
        return row
    row.seconds = time.perf_counter() - t0
    if not result_path.is_file():
        row.note = f"worker exited with status {proc.returncode} and no result (see its stderr)"
        return row
    result = json.loads(result_path.read_text())
    row = Row(**{**asdict(row), **result, "seconds": row.seconds})
    return row


# ----------------------------------------------------------------------------- driver
def run_benchmark(config: BenchmarkConfig) -> dict[str, Any]:
    """Measure every row of `config` (see the module docstring) and return the report.

    Returns:
        {"format", "format_version", "mlvos_version", "model", "checkpoint_sha256", "data",
        "timing", "device", "threads", "machine", "rows": [Row fields ...], "seconds"}.

    Raises:
        InputError / ManifestError / DatasetError: bad options, a missing or broken export, a
            missing or empty validation set. A row that fails is a row with status "failed".
    """
    from mlvos import __version__

    config.check()
    t0 = time.perf_counter()
    load_start = _load_avg()
    with clock():
        manifest = _load_manifest(config.model)
        names = _check_data(config.data, config.split)
        plan = _plan(config, manifest)
        runnable = [p for p in plan if isinstance(p, dict)]
        logger.info(stamped(f"benchmark of {config.model}: {len(runnable)} row(s) to run, "
                            f"{len(plan) - len(runnable)} skipped; each in a fresh process"))
        rows: list[Row] = []
        with tempfile.TemporaryDirectory(prefix="mlvos-benchmark-") as tmp:
            work = Path(tmp)
            timing = _timing_clip(config, names, work) if runnable else None
            common = {"model": str(config.model), "data": str(config.data),
                      "split": config.split, "sequences": config.sequences,
                      "max_frames": config.max_frames, "warmup": config.warmup,
                      "threads": config.threads, "work": str(work)}
            done = 0
            for item in plan:
                if isinstance(item, Row):
                    logger.info(stamped(f"{item.backend} {item.precision}: skipped "
                                        f"({item.note})"))
                    rows.append(item)
                    continue
                done += 1
                tag = f"{item['backend']}-{item['precision']}"
                pred = str(Path(config.pred_dir) / tag) if config.pred_dir else None
                logger.info(stamped(f"{done}/{len(runnable)} {item['backend']} "
                                    f"{item['precision']} on {item['device']} ..."))
                row = _run_row({**common, **item, "pred_dir": pred}, work,
                               config.row_timeout_s)
                logger.info(stamped(f"{done}/{len(runnable)} {_summary_line(row)}"))
                rows.append(row)
    return {
        "format": BENCHMARK_FORMAT,
        "format_version": BENCHMARK_VERSION,
        "mlvos_version": __version__,
        "model": str(config.model),
        "checkpoint_sha256": (manifest.data.get("checkpoint") or {}).get("sha256"),
        "data": {"root": str(config.data), "split": config.split,
                 "sequences": config.sequences or len(names), "max_frames": config.max_frames},
        "timing": timing,
        "device": config.device,
        "threads": config.threads,
        # Other processes' load skews CPU timings: the 1/5/15-minute load averages say how much.
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_start": load_start, "load_avg_end": _load_avg()},
        "rows": [asdict(r) for r in rows],
        "seconds": time.perf_counter() - t0,
    }


def _load_avg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _summary_line(row: Row) -> str:
    head = f"{row.backend} {row.precision}"
    if row.status != "ok":
        return f"{head}: {row.status} ({row.note})"
    return (f"{head}: J&F {100 * row.jf:.1f}, p50 {row.p50_ms:.1f} ms, {row.fps:.2f} FPS, "
            f"peak RSS {row.peak_rss_mb:.0f} MB ({row.seconds:.0f} s)")


# ----------------------------------------------------------------------------- outputs
def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown_table(report: dict[str, Any]) -> str:
    """The report's rows as a markdown table, with a line saying what was measured."""
    rows = report["rows"]
    device_col = any(r.get("peak_device_mb") is not None for r in rows)
    t = report.get("timing") or {}
    head = ["backend", "precision", "size (MB)", "J&F (%)", "ms/frame p50", "p90", "FPS",
            "peak RSS (MB)"] + (["peak device (MB)"] if device_col else []) + ["notes"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 3) + ["---"]) + "|"]
    for r in rows:
        note = r["note"] if r["status"] != "ok" else ""
        if r["status"] == "failed":
            note = f"failed: {note}"
        cells = [r["backend"], r["precision"], _num(r["size_mb"], ".1f"),
                 _num(None if r["jf"] is None else 100 * r["jf"], ".1f"),
                 _num(r["p50_ms"], ".1f"), _num(r["p90_ms"], ".1f"), _num(r["fps"], ".2f"),
                 _num(r["peak_rss_mb"], ".0f")]
        cells += [_num(r["peak_device_mb"], ".0f")] if device_col else []
        lines.append("| " + " | ".join(cells + [note.replace("|", "/")]) + " |")
    d, m = report["data"], report["machine"]
    frames = f"first {d['max_frames']} frames of " if d["max_frames"] else ""
    load = f", load average {m['load_avg_start'][0]:.1f}" if m.get("load_avg_start") else ""
    if t:
        lines.append(
            f"\nJ&F: DAVIS 2017 protocol on the {frames}{d['sequences']} sequence(s) of "
            f"{d['root']}. Speed: end to end per frame at {t['resolution']} with "
            f"{t['objects']} object(s), {t['iters']} frames after {t['warmup']} warm-up, on "
            f"{report['device']} ({m['cpus']} CPU cores{load}). Peak RSS: the row's own "
            "process after loading and the timed run.")
    return "\n".join(lines)


def write_tables(report: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """table.md, table.csv and table.json in `out`, each written atomically."""
    from mlvos.profiling.report import csv_text

    out = Path(out)
    if out.is_file():
        raise InputError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    md, csv_, js = (out / name for name in TABLE_FILES)
    atomic_write_text(md, markdown_table(report) + "\n")
    atomic_write_text(csv_, csv_text(list(COLUMNS), [[r[c] for c in COLUMNS]
                                                     for r in report["rows"]]))
    atomic_write_text(js, stable_json(report))
    return [md, csv_, js]


if __name__ == "__main__":  # the row worker (_run_row's command line)
    sys.exit(worker_main(sys.argv[1:]))
