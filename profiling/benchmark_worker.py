"""The `mlvos benchmark` worker: one backend x precision row, measured in its own process.

benchmark._run_row runs `python -m mlvos.profiling.benchmark SPEC.json RESULT.json`, which calls
worker_main here: a fresh interpreter per row, so ru_maxrss is that row's peak memory alone.
The spec carries everything the row needs (export, data, timing clip folder); the result is a
dict of benchmark.Row fields.

numpy only at import time; the backends, torch and the data readers are imported by measure_row.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import MlvosError
from mlvos.fileio import atomic_dir, atomic_write_text, stable_json
from mlvos.runtime.spec import Graph, parse_device


def files_mb(paths: list[Path]) -> float:
    """Total size of `paths` in MB (1e6 bytes)."""
    return sum(p.stat().st_size for p in paths) / 1e6


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes vs KiB


def _device_used_mb(device: str) -> float | None:
    """Device memory in use on a CUDA `device` (cudaMemGetInfo: total - free), None on the CPU
    or without cuda-python. Never raises: the column is informative."""
    kind, index = parse_device(device)
    if kind != "cuda":
        return None
    try:
        from mlvos.runtime.backends.cuda_mem import check, cudart

        rt = cudart()
        check(rt.cudaSetDevice(index), "cudaSetDevice")
        free, total = check(rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return (int(total) - int(free)) / 2**20
    except (MlvosError, ImportError, AttributeError):
        return None


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, disable=None)


def measure_row(spec: dict[str, Any]) -> dict[str, Any]:
    """The worker: open one runner, time it, then score it; Row fields as a dict.

    Runs in the row's own process (see benchmark._run_row), so ru_maxrss is this row's peak.
    """
    from mlvos.data.datasets import DavisDataset
    from mlvos.data.evaluate import EvalResult, evaluate_sequence
    from mlvos.profiling.measure import SyntheticVideo, run_video, summarize
    from mlvos.profiling.probes import device_memory_probe, timer_for
    from mlvos.runtime.backends import open_runner
    from mlvos.runtime.predictor import VideoPredictor

    backend, precision = spec["backend"], spec["precision"]
    if backend == "torch" and spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])
    frames = np.load(work / "frames.npy")
    first = np.load(work / "label.npy")
    video = SyntheticVideo(list(frames), first, int(len(np.unique(first)) - 1), "benchmark")
    ds = DavisDataset(spec["data"], split=spec["split"])
    names = ds.sequences[: spec["sequences"]] if spec["sequences"] else ds.sequences
    lengths = {n: min(len(ds[n]), spec["max_frames"] or len(ds[n])) for n in names}
    out: dict[str, Any] = {"status": "ok"}
    # Before the runner: the CUDA context that this first call may create is not the runner's.
    device_before = _device_used_mb(spec["device"])
    t0 = time.perf_counter()
    with open_runner(spec["model"], backend=backend, precision=precision,
                     device=spec["device"], threads=spec.get("threads")) as runner:
        out["load_s"] = time.perf_counter() - t0
        bar = _bar(len(frames) + sum(lengths.values()), f"{backend} {precision}")
        run = run_video(runner, video, frames=len(frames) - 1, warmup=spec["warmup"],
                        timer=timer_for(runner))
        bar.update(len(frames))
        total = summarize(run.timed("wall")["total"])
        out.update(p50_ms=total["p50"], p90_ms=total["p90"], fps=total["fps"],
                   peak_rss_mb=_peak_rss_mb())
        out["details"] = {"timing": total, "timer": timer_for(runner).name}
        probe = device_memory_probe(runner)
        if probe is not None:  # the backend's own peak (torch: max_memory_allocated)
            out["peak_device_mb"] = probe.peak_mb()
            out["details"]["device_memory"] = "peak allocated, the backend's own probe"
        elif device_before is not None and (after := _device_used_mb(spec["device"])):
            # TensorRT and onnxruntime-gpu allocate up front (engines, arenas, the bank): what
            # the runner holds after the timed run is its footprint.
            out["peak_device_mb"] = after - device_before
            out["details"]["device_memory"] = "in use after the timed run (cudaMemGetInfo)"
        results = []
        for name in names:
            seq = ds[name]
            predictor = VideoPredictor(runner)
            predictor.add_mask(0, seq.first_mask())
            pred = []
            for i in range(lengths[name]):
                pred.append(predictor.step(seq.read_frame(i)))
                bar.update(1)
            gt = np.stack([seq.read_mask(i) for i in range(lengths[name])])
            results.append(evaluate_sequence(gt, np.stack(pred), name))
            if spec.get("pred_dir"):
                _write_pred(Path(spec["pred_dir"]) / name, seq, pred)
        bar.close()
        summary = EvalResult(results).summary()
        out.update(jf=summary["J&F-Mean"], j=summary["J-Mean"], f=summary["F-Mean"])
        out["details"]["frames_scored"] = lengths
        out["details"]["peak_rss_total_mb"] = _peak_rss_mb()
        if backend == "trt":
            from mlvos.runtime.backends.trt import ENGINE_DIR, engine_paths

            engines = [engine_paths(Path(spec["model"]) / ENGINE_DIR, g, precision)[0]
                       for g in Graph.ALL]
            out["size_mb"] = files_mb([p for p in engines if p.is_file()])
    return out


def _write_pred(folder: Path, seq, pred: list[np.ndarray]) -> None:
    from mlvos.palette import write_mask

    with atomic_dir(folder, force=True) as tmp:
        for path, labels in zip(seq.frames, pred, strict=False):
            write_mask(tmp / f"{path.stem}.png", labels)


def worker_main(argv: list[str]) -> int:
    """`python -m mlvos.profiling.benchmark SPEC.json RESULT.json` (run by benchmark._run_row)."""
    from mlvos.logs import configure_logging

    configure_logging()
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = measure_row(spec)
    except Exception as e:  # noqa: BLE001 - the row reports any failure; the table goes on
        if not isinstance(e, MlvosError):  # unexpected: the traceback is for the bug report
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result = {"status": "failed", "note": f"{type(e).__name__}: {first}"}
    atomic_write_text(argv[1], stable_json(result))
    return 0
