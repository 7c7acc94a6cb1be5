"""`mlvos profile gpu-check`: one self-contained, time-boxed GPU measurement of the torch backend.

Needs torch (a CUDA build) and mlvos only: no TensorRT, onnx, OpenCV or matplotlib (plots and
the OpenCV synthetic videos are used when present). With random weights of a variant (default
`paper`) it measures, for each precision (FP16, FP32) and resolution (480p, 720p, 1080p):

- per-stage latency with CUDA events and end to end (VideoPredictor, stages synchronized),
  FPS, FPS without per-stage synchronization, peak device memory, GMACs and TFLOP/s;
- CUDA graphs off/on for the query encoder and read+decode at fixed shapes (captured here with
  torch.cuda.CUDAGraph, since TorchRunner does not capture graphs itself);
- FP16-vs-FP32 agreement of the label maps (IoU per object) on a short synthetic video.

Every section is time-boxed against one budget (default 330 s), failures are recorded in the
report instead of raised, and the report is rewritten after each section, so an interrupted
check still leaves its partial results. `--smoke` runs the same code on the CPU at 64x96.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import MlvosError, require
from mlvos.profiling.gpu_report import _agreement_report, _csv, _plots
from mlvos.profiling.measure import (
    SyntheticVideo,
    frame0_memory,
    model_stage_gmacs,
    run_video,
    stage_sum_check,
    summarize,
    synthetic_video,
    tflops,
)
from mlvos.profiling.probes import StageTimer, TorchCudaTimer, WallTimer
from mlvos.runtime.predictor import VideoPredictor
from mlvos.runtime.spec import (
    DEFAULT_CAPACITY,
    frame_to_input,
    padded_size,
    padding_for,
    parse_resolution,
)

GPU_FORMAT = "mlvos-gpu-check"
REPORT_FILE = "gpu_check.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    variant: str
    device: str
    resolutions: tuple[str, ...]
    precisions: tuple[str, ...]
    objects: int
    warmup: int
    iters: int
    budget_s: float
    unique_frames: int
    agreement_frames: int
    graph_iters: int
    capacity: int = DEFAULT_CAPACITY
    seed: int = 0


FULL = dict(
    variant="paper",
    device="cuda",
    resolutions=("480p", "720p", "1080p"),
    precisions=("fp16", "fp32"),
    warmup=5,
    iters=30,
    budget_s=330.0,
    unique_frames=6,
    agreement_frames=12,
    graph_iters=30,
)
SMOKE = dict(
    variant="tiny",
    device="cpu",
    resolutions=("64x96",),
    precisions=("fp32",),
    warmup=1,
    iters=3,
    budget_s=50.0,
    unique_frames=3,
    agreement_frames=4,
    graph_iters=3,
)
# Shares of the budget for all latency configs and all CUDA-graph configs; the rest is for
# setup (model, checkpoint, videos), the agreement videos and the report. A section never gets
# more than what is left, and none starts with less than MIN_SECTION_S left.
LATENCY_SHARE, GRAPH_SHARE = 0.55, 0.2
MIN_SECTION_S = 3.0


class _Check:
    """The report under construction, the clock, and the section runner."""

    def __init__(self, out: Path, settings: Settings):
        self.out, self.settings = out, settings
        self.start = time.perf_counter()
        self.torch: Any = None
        self.report: dict[str, Any] = {
            "format": GPU_FORMAT,
            "version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": settings.__dict__,
            "status": "running",
            "sections": {},
            "configs": [],
            "cuda_graphs": [],
            "agreement": None,
            "errors": [],
        }

    def left(self) -> float:
        return self.settings.budget_s - (time.perf_counter() - self.start)

    def write(self) -> None:
        from mlvos.fileio import atomic_write_text

        self.report["elapsed_s"] = time.perf_counter() - self.start
        atomic_write_text(self.out / REPORT_FILE, json.dumps(self.report, indent=1))

    def section(self, name: str, fn: Callable[[], Any], *, min_s: float = MIN_SECTION_S) -> Any:
        """Run fn() unless the budget is spent; record status, time and any error."""
        if self.left() < min_s:
            self.report["sections"][name] = {"status": "skipped: time budget spent"}
            logger.warning(f"[{self._t()}] {name}: skipped (time budget spent)")
            self.write()
            return None
        t0 = time.perf_counter()
        result, status = None, "ok"
        try:
            result = fn()
        except Exception as e:  # record and go on: a GPU check should measure, not stop
            status = "failed"
            self.report["errors"].append(
                {
                    "section": name,
                    "error": f"{type(e).__name__}: {str(e)[:600]}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            )
            logger.warning(f"[{self._t()}] {name}: FAILED {type(e).__name__}: {str(e)[:200]}")
            self._free()
        self.report["sections"][name] = {"status": status, "seconds": time.perf_counter() - t0}
        self.write()
        return result

    def _free(self) -> None:
        torch = self.torch
        if torch is not None and torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()

    def _t(self) -> str:
        return f"{time.perf_counter() - self.start:6.1f}s"


def _settings(smoke: bool, **given: Any) -> Settings:
    base = dict(SMOKE if smoke else FULL)
    for k, v in given.items():
        if v is not None:
            base[k] = tuple(v) if isinstance(v, list) else v
    return Settings(**base)


def _setup(chk: _Check, workdir: Path, cudnn_benchmark: bool) -> Path:
    """Import torch, check the device, record versions and write a random-weight checkpoint."""
    from mlvos.envinfo import collect

    s = chk.settings
    torch = chk.torch = require("torch", "train", "mlvos profile gpu-check")
    torch.backends.cudnn.benchmark = cudnn_benchmark
    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if s.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MlvosError(
                f"no CUDA device is visible to torch {torch.__version__} (built for CUDA "
                f"{torch.version.cuda}); install a CUDA build of torch, or run --smoke on the CPU"
            )
        dev = torch.device(s.device)
        props = torch.cuda.get_device_properties(dev)
        info.update(
            {
                "gpu": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "gpu_memory_gib": props.total_memory / 2**30,
                "cudnn": torch.backends.cudnn.version(),
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            }
        )
    chk.report["device"] = info
    chk.report["env"] = collect()
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.registry import build_model

    model = build_model(s.variant, seed=s.seed)
    chk.report["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    path = save_checkpoint(workdir / f"{s.variant}.pt", model)
    del model
    logger.info(
        f"[{chk._t()}] setup: {info.get('gpu', s.device)}, torch {torch.__version__}, "
        f"{s.variant} ({chk.report['params_m']:.1f} M parameters, random weights)"
    )
    return path


@dataclass(frozen=True)
class _Pass:
    """What the sections of one precision share: the check, its runner and timer."""

    chk: _Check
    runner: Any
    timer: StageTimer
    precision: str


def _latency(ctx: _Pass, res: str, video: SyntheticVideo, budget: float) -> dict[str, Any]:
    """Per-stage latency through the predictor and FPS without per-stage synchronization."""
    chk, runner, timer, precision = ctx.chk, ctx.runner, ctx.timer, ctx.precision
    s, torch = chk.settings, chk.torch
    label, h, w = parse_resolution(res)
    cuda = runner.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(runner.device)
    deadline = time.perf_counter() + budget
    run = run_video(
        runner, video, frames=s.warmup + s.iters, warmup=s.warmup, timer=timer, deadline=deadline
    )
    wall = {st: summarize(v) for st, v in run.timed("wall").items()}
    device = {st: summarize(v) for st, v in run.timed("device").items()} if run.device else None
    ph, pw = padded_size(h, w, runner.stride)
    entry: dict[str, Any] = {
        "precision": precision,
        "resolution": label,
        "height": h,
        "width": w,
        "padded": [ph, pw],
        "objects": video.objects,
        "frames_timed": wall["total"]["n"],
        "wall": wall,
        "device": device,
        "stage_sum_check": stage_sum_check(wall),
        "peak_device_mb": torch.cuda.max_memory_allocated(runner.device) / 2**20 if cuda else None,
    }
    try:
        entry["gmacs"] = model_stage_gmacs(s.variant, h, w, video.objects, runner.capacity)
        entry["tflops"] = tflops(entry["gmacs"], device or wall)
    except Exception as e:  # the cost model is optional
        entry["gmacs_error"] = f"{type(e).__name__}: {e}"
    if cuda and time.perf_counter() < deadline:
        # Throughput as an application sees it: no synchronization between stages.
        pred = VideoPredictor(runner, profile=False)
        pred.add_mask(0, video.first_label)
        for i in range(1 + s.warmup):
            pred.step(video.frame(i))
        runner.synchronize()
        t0, n = time.perf_counter(), 0
        while n < s.iters and (n < 3 or time.perf_counter() < deadline):
            pred.step(video.frame(1 + s.warmup + n))  # returns host labels: synchronizes
            n += 1
        entry["unsynced_fps"] = n / (time.perf_counter() - t0)
    chk.report["configs"].append(entry)
    busy = f", device busy {device['total']['mean']:.2f} ms" if device else ""
    peak = f", peak {entry['peak_device_mb']:.0f} MiB" if cuda else ""
    logger.info(
        f"[{chk._t()}] {precision} {label}: {wall['total']['mean']:8.2f} ms/frame wall "
        f"({wall['total']['fps']:.1f} FPS){busy}{peak}"
    )
    return entry


@contextlib.contextmanager
def _no_host_sync_checks():
    """STMNet's input checks read a device value on the host (`bool(tensor)`), which CUDA graph
    capture forbids; shapes are fixed and were checked eagerly before, so skip them here."""
    from mlvos.model import network

    saved = network._checking
    network._checking = lambda: False
    try:
        yield
    finally:
        network._checking = saved


def _filled_bank(runner: Any, video: SyntheticVideo):
    """Bank filled to capacity with frame 0's memory; returns (frame on device, object count)."""
    frame_dev, _, (key, value), n = frame0_memory(runner, video)
    for slot in range(runner.capacity):
        runner.write_slot(slot, key, value, n)
    runner.set_valid(np.ones((n, runner.capacity), np.float32))
    return frame_dev, n


def _time_calls(fn: Callable[[], Any], timer: Any, iters: int, deadline: float) -> list[float]:
    times: list[float] = []
    while len(times) < iters and (len(times) < 3 or time.perf_counter() < deadline):
        a = timer.mark()
        fn()
        b = timer.mark()
        times.append(timer.elapsed_ms(a, b))
    return times


def _cuda_graphs(ctx: _Pass, res: str, video: SyntheticVideo, budget: float) -> dict[str, Any]:
    """Eager vs CUDA-graph replay of encode_query and read_decode at fixed shapes."""
    chk, runner, timer, precision = ctx.chk, ctx.runner, ctx.timer, ctx.precision
    torch = chk.torch
    deadline = time.perf_counter() + budget
    label, _, _ = parse_resolution(res)
    frame_dev, n = _filled_bank(runner, video)
    query = runner.encode_query(frame_dev)
    stages = {
        "query_encoder": lambda: runner.encode_query(frame_dev),
        "read_decoder": lambda: runner.read_decode(query, n),
    }
    entry: dict[str, Any] = {
        "precision": precision,
        "resolution": label,
        "objects": n,
        "stages": {},
    }
    iters = chk.settings.graph_iters
    for name, fn in stages.items():
        share = (deadline - time.perf_counter()) / (2 if name == "query_encoder" else 1)
        eager_out = fn()
        eager = _time_calls(fn, timer, iters, time.perf_counter() + share / 2)
        with _no_host_sync_checks():
            side = torch.cuda.Stream(runner.device)
            side.wait_stream(torch.cuda.current_stream(runner.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up on a side stream before capture, as torch asks
                    fn()
            torch.cuda.current_stream(runner.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = fn()
        replay = _time_calls(graph.replay, timer, iters, time.perf_counter() + share / 2)
        graph.replay()
        torch.cuda.synchronize(runner.device)
        a = eager_out[0] if isinstance(eager_out, tuple) else eager_out.key
        b = static_out[0] if isinstance(static_out, tuple) else static_out.key
        e, g = summarize(eager), summarize(replay)
        entry["stages"][name] = {
            "eager": e,
            "graph": g,
            "speedup": e["mean"] / g["mean"] if g["mean"] else None,
            "max_abs_diff": float((a.float() - b.float()).abs().max()),
        }
        if name == "read_decoder":
            entry["stages"][name]["labels_equal"] = float(
                (eager_out[1] == static_out[1]).float().mean()
            )
        del graph, static_out
        torch.cuda.empty_cache()  # the graph's private memory pool
    chk.report["cuda_graphs"].append(entry)
    logger.info(
        f"[{chk._t()}] {precision} {label} CUDA graphs: "
        + ", ".join(
            f"{k} {v['eager']['mean']:.2f} -> {v['graph']['mean']:.2f} ms (x{v['speedup']:.2f})"
            for k, v in entry["stages"].items()
        )
    )
    return entry


def _labels(runner: Any, video: SyntheticVideo, frames: int) -> dict[str, list[np.ndarray]]:
    """Label maps of a short video two ways.

    "propagated": the predictor's output (each frame's result feeds the next, so one flipped
    pixel can grow). "one_step": every frame read against the same bank (frame 0 with its true
    mask), which isolates the numerical difference of a precision from error accumulation.
    """
    pred = VideoPredictor(runner)
    pred.add_mask(0, video.first_label)
    propagated = [pred.step(video.frame(i)) for i in range(frames)]
    frame_dev, n = _filled_bank(runner, video)
    pad = padding_for(*video.frames[0].shape[:2], runner.stride)
    one_step = []
    for i in range(frames):
        x = frame_to_input(video.frame(i), pad)
        _, labels = runner.read_decode(runner.encode_query(runner.upload(x)), n)
        one_step.append(runner.download(labels))  # slot k = k-th object id, same in every run
    return {"propagated": propagated, "one_step": one_step, "slots": list(range(1, n + 1))}


def _precision_pass(
    chk: _Check, ckpt: Path, precision: str, videos: Callable, agreement: dict[str, dict]
) -> None:
    from mlvos.runtime.backends.torch_backend import TorchRunner

    s, torch = chk.settings, chk.torch
    runner = chk.section(
        f"{precision}: load",
        lambda: TorchRunner(ckpt, device=s.device, precision=precision, capacity=s.capacity),
    )
    if runner is None:
        return
    cuda = runner.device.type == "cuda"
    timer = TorchCudaTimer(torch, runner.device) if cuda else WallTimer(runner.synchronize)
    n_lat = len(s.resolutions) * len(s.precisions)
    ctx = _Pass(chk, runner, timer, precision)
    with runner:
        # Every resolution's latency first, then every resolution's CUDA graphs.
        for what, measure, share in (
            ("latency", _latency, LATENCY_SHARE),
            ("cuda graphs", _cuda_graphs, GRAPH_SHARE),
        ):
            budget = share * s.budget_s / n_lat  # of one (precision, resolution)
            for res in s.resolutions:
                name = f"{precision} {res}: {what}"
                if measure is _cuda_graphs and not cuda:
                    chk.report["sections"][name] = {"status": "skipped: needs CUDA"}
                    continue
                chk.section(
                    name,
                    lambda measure=measure, res=res, budget=budget: measure(
                        ctx, res, videos(res, s.objects), min(budget, chk.left())
                    ),
                )
        res = s.resolutions[0]
        objects = max(2, s.objects)
        chk.section(
            f"{precision} {res}: labels for agreement",
            lambda: agreement.setdefault(
                precision, _labels(runner, videos(res, objects), s.agreement_frames)
            ),
        )
    runner.model = runner.bank_key = runner.bank_value = None  # free device memory now
    chk._free()


def run_gpu_check(
    *,
    out: str | os.PathLike,
    smoke: bool = False,
    variant: str | None = None,
    device: str | None = None,
    resolutions: tuple[str, ...] | None = None,
    precisions: tuple[str, ...] | None = None,
    objects: int = 1,
    iters: int | None = None,
    budget_s: float | None = None,
    cudnn_benchmark: bool = False,
) -> dict[str, Any]:
    """Run the check and write gpu_check.json, gpu_check.csv and PNG plots into `out`.

    Args:
        out: report folder (created).
        smoke: CPU defaults (tiny variant, 64x96, FP32, a few frames, 50 s budget).
        variant, device, resolutions, precisions, iters, budget_s: override the defaults
            (paper, cuda, 480p/720p/1080p, fp16+fp32, 30 frames, 330 s).
        objects: tracked objects in the latency runs (the agreement video uses >= 2).
        cudnn_benchmark: let cuDNN autotune convolutions (slower first frames).

    Progress goes to the logger mlvos.profiling.gpu_check (failed or skipped sections as
    warnings); `mlvos profile gpu-check` prints gpu_report.final_table(report) at the end.

    Returns:
        The report; report["status"] is "ok", "partial" (some section failed or was skipped
        for time) or "failed" (setup failed). Never raises for a failed measurement.
    """
    settings = _settings(
        smoke,
        variant=variant,
        device=device,
        resolutions=resolutions,
        precisions=precisions,
        iters=iters,
        budget_s=budget_s,
        objects=objects,
    )
    dropped = [p for p in settings.precisions if p == "fp16"]
    if not settings.device.startswith("cuda") and dropped:
        # TorchRunner refuses fp16 on the CPU (it would be emulated, not measured).
        kept = tuple(p for p in settings.precisions if p != "fp16") or ("fp32",)
        settings = dataclasses.replace(settings, precisions=kept)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chk = _Check(out, settings)
    chk.report["smoke"] = smoke
    if not settings.device.startswith("cuda") and dropped:
        chk.report["notes"] = ["fp16 needs CUDA on the torch backend; measured fp32 only"]
    chk.write()
    video_cache: dict[tuple[str, int], SyntheticVideo] = {}

    def videos(res: str, k: int) -> SyntheticVideo:
        if (res, k) not in video_cache:
            _, h, w = parse_resolution(res)
            video_cache[(res, k)] = synthetic_video(
                settings.seed, h, w, k, unique=settings.unique_frames
            )
        return video_cache[(res, k)]

    with tempfile.TemporaryDirectory(prefix="mlvos-gpu-check-") as tmp:
        ckpt = chk.section("setup", lambda: _setup(chk, Path(tmp), cudnn_benchmark), min_s=0.0)
        if ckpt is not None:
            agreement: dict[str, dict] = {}
            for precision in settings.precisions:
                _precision_pass(chk, ckpt, precision, videos, agreement)
            chk.section(
                "agreement",
                lambda: _agreement_report(
                    chk, agreement, videos(settings.resolutions[0], max(2, settings.objects))
                ),
                min_s=0.0,
            )
    if video_cache:
        chk.report["videos"] = next(iter(video_cache.values())).source
    chk.section("csv", lambda: _csv(chk), min_s=0.0)
    chk.section("plots", lambda: _plots(chk), min_s=0.0)
    sections = chk.report["sections"]
    if "ok" != (sections.get("setup") or {}).get("status"):
        chk.report["status"] = "failed"
    elif all(str(v.get("status")).startswith(("ok", "skipped: needs")) for v in sections.values()):
        chk.report["status"] = "ok"
    else:
        chk.report["status"] = "partial"
    chk.write()
    return chk.report
