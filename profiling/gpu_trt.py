"""The TensorRT part of `mlvos profile gpu-check` (profiling.gpu_check), per variant: export
(fp32 + fp16 graphs, unvalidated), FP16 engines with the default profile, VideoPredictor over
TrtRunner at each resolution, and `mlvos check` of the FP16 engines against the FP32 graphs on
onnxruntime (profiling.compare.run_check).

It runs only where `tensorrt` is importable and a CUDA device is usable (trt_status); tensorrt is
looked up first and imported only after cuda_device_status said the device works, since
TensorRT's runtime crashes instead of raising without one.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlvos.profiling.measure import run_video, stage_sum_check, summarize
from mlvos.runtime.spec import parse_device, parse_resolution

if TYPE_CHECKING:
    from mlvos.profiling.gpu_check import Settings, _Check

logger = logging.getLogger(__name__)

# What a variant's TensorRT part needs before it may start (an export and three engine builds
# cannot be interrupted): estimates of export + builds + timing + check on an H100. tiny builds
# in seconds; paper's ResNet-50 levels with a profile up to 1080p take minutes.
TRT_MIN_S = {"tiny": 45.0}
TRT_MIN_S_DEFAULT = 240.0
# The `mlvos check` step at the end (recording on onnxruntime's CPU, Polygraphy runs).
CHECK_MIN_S = 15.0
# Kept back from the TensorRT part for what follows it (the CSV, the plots).
FINAL_S = 10.0
PRECISION = "fp16"


def trt_status(settings: Settings) -> tuple[bool, str]:
    """(True, versions) if the TensorRT part can run, else (False, why). Never raises."""
    try:
        found = importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return False, "tensorrt not importable"
    if parse_device(settings.device)[0] != "cuda":
        return False, f"needs CUDA (device {settings.device})"
    from mlvos.runtime.backends.cuda_mem import cuda_device_status

    ok, why = cuda_device_status(parse_device(settings.device)[1])
    if not ok:
        return False, f"no usable CUDA device for TensorRT: {why}"
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as e:  # a broken install: the part is skipped, the check goes on
        return False, f"tensorrt not importable ({type(e).__name__}: {e})"
    return True, f"TensorRT {getattr(trt, '__version__', '?')}, {why}"


def _export(chk: _Check, variant: str, model: Any, workdir: Path) -> Path:
    from mlvos.export import export_checkpoint
    from mlvos.model.checkpoint import save_checkpoint

    ckpt = save_checkpoint(workdir / f"{variant}.pt", model)
    out = export_checkpoint(
        ckpt,
        workdir / f"{variant}-export",
        capacity=chk.settings.capacity,
        precisions=("fp32", PRECISION),
        validate=False,
        force=True,
    )
    logger.info(f"[{chk._t()}] {variant} trt: exported to {out}")
    return Path(out)


def _engines(chk: _Check, variant: str, export_dir: Path) -> dict[str, Any]:
    from mlvos.runtime.backends.trt import Profile, ensure_engines
    from mlvos.runtime.manifest import Manifest

    t0 = time.perf_counter()
    records = ensure_engines(
        Manifest.load(export_dir),
        PRECISION,
        profile=Profile(),
        device=parse_device(chk.settings.device)[1],
    )
    seconds = time.perf_counter() - t0
    logger.info(f"[{chk._t()}] {variant} trt: {PRECISION} engines ready in {seconds:.0f} s")
    return {
        "seconds": seconds,
        "built": sorted(g for g, r in records.items() if r.built),
        "profile": Profile().__dict__,
    }


def _open(chk: _Check, export_dir: Path) -> Any:
    """TrtRunner on the engines just built (never builds), opened."""
    from mlvos.runtime.backends.trt import Profile, TrtRunner
    from mlvos.runtime.manifest import Manifest

    runner = TrtRunner(
        Manifest.load(export_dir),
        PRECISION,
        profile=Profile(),
        allow_build=False,
        device=parse_device(chk.settings.device)[1],
    )
    runner.open()
    return runner


def _latency(chk: _Check, variant: str, runner: Any, res: str, video: Any, budget: float):
    from mlvos.profiling.probes import timer_for

    s = chk.settings
    label, h, w = parse_resolution(res)
    run = run_video(
        runner,
        video,
        frames=s.warmup + s.iters,
        warmup=s.warmup,
        timer=timer_for(runner),
        deadline=time.perf_counter() + budget,
    )
    wall = {st: summarize(v) for st, v in run.timed("wall").items()}
    device = {st: summarize(v) for st, v in run.timed("device").items()} if run.device else None
    entry = {
        "variant": variant,
        "backend": "trt",
        "precision": PRECISION,
        "resolution": label,
        "height": h,
        "width": w,
        "objects": video.objects,
        "frames_timed": wall["total"]["n"],
        "wall": wall,
        "device": device,
        "stage_sum_check": stage_sum_check(wall),
    }
    chk.report["variants"][variant]["trt"]["configs"].append(entry)
    logger.info(
        f"[{chk._t()}] {variant} trt {PRECISION} {label}: {wall['total']['mean']:8.2f} ms/frame "
        f"wall ({wall['total']['fps']:.1f} FPS)"
    )
    return entry


def _check(chk: _Check, variant: str, export_dir: Path, workdir: Path) -> dict[str, Any]:
    from mlvos.profiling.compare import run_check

    report = run_check(
        model=export_dir,
        out=workdir / f"{variant}-check",
        backend="trt",
        precisions=[PRECISION],
        device=parse_device(chk.settings.device)[1],
    )
    kept = {k: report.get(k) for k in ("passed", "precisions", "graphs", "attention", "seconds")}
    chk.report["variants"][variant]["trt"]["check"] = kept
    logger.info(
        f"[{chk._t()}] {variant} trt: mlvos check {PRECISION} engines vs fp32 on onnxruntime: "
        + ("PASS" if report.get("passed") else "FAIL")
    )
    return kept


def run_trt(
    chk: _Check, variant: str, model: Any, videos: Callable, workdir: Path, remaining: int
) -> None:
    """The TensorRT sections of one variant, in an even share of what is left of the budget
    (less FINAL_S) among the `remaining` variants, this one included. Every step that can fail
    runs inside a section (recorded, never raised)."""
    s = chk.settings
    start = time.perf_counter()
    budget = max(0.0, chk.left() - FINAL_S) / max(1, remaining)
    deadline = start + budget
    need = TRT_MIN_S.get(variant, TRT_MIN_S_DEFAULT)
    if budget < need:
        chk.skip(
            f"{variant}: trt",
            f"time budget spent ({budget:.0f} s left for it, about {need:.0f} s needed)",
            benign=False,
        )
        return
    chk.report["variants"][variant]["trt"] = {"precision": PRECISION, "configs": []}
    try:
        export_dir = chk.section(
            f"{variant} trt: export",
            lambda: _export(chk, variant, model, workdir),
            deadline=deadline,
        )
        if export_dir is None:
            return
        engines = chk.section(
            f"{variant} trt: {PRECISION} engines",
            lambda: _engines(chk, variant, export_dir),
            deadline=deadline,
        )
        if engines is None:
            return
        chk.report["variants"][variant]["trt"]["engines"] = engines
        runner = chk.section(
            f"{variant} trt: open", lambda: _open(chk, export_dir), deadline=deadline
        )
        if runner is not None:
            try:
                for i, res in enumerate(s.resolutions):
                    slice_s = (deadline - time.perf_counter() - CHECK_MIN_S) / (
                        len(s.resolutions) - i
                    )
                    chk.section(
                        f"{variant} trt {PRECISION} {res}: latency",
                        lambda res=res, slice_s=slice_s: _latency(
                            chk, variant, runner, res, videos(res, s.objects), slice_s
                        ),
                        deadline=deadline,
                    )
            finally:
                runner.close()
        if importlib.util.find_spec("polygraphy") is None:
            chk.skip(
                f"{variant} trt: check",
                "polygraphy not installed (pip install 'mlvos[export]')",
                benign=True,
            )
        else:
            chk.section(
                f"{variant} trt: check",
                lambda: _check(chk, variant, export_dir, workdir),
                min_s=CHECK_MIN_S,
                deadline=deadline,
            )
    finally:
        chk.free()
