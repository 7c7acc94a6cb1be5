"""The torch-backend sections of `mlvos profile gpu-check` (profiling.gpu_check): per precision of
one variant, latency per resolution, CUDA graphs off/on, and the label maps of a short video that
gpu_numerics compares."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlvos.profiling.measure import (
    SyntheticVideo,
    frame0_memory,
    model_stage_gmacs,
    run_video,
    stage_sum_check,
    summarize,
    tflops,
)
from mlvos.profiling.probes import StageTimer, TorchCudaTimer, WallTimer
from mlvos.runtime.predictor import VideoPredictor
from mlvos.runtime.spec import frame_to_input, padded_size, padding_for, parse_resolution

if TYPE_CHECKING:
    from mlvos.profiling.gpu_check import _Check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pass:
    """What the sections of one (variant, precision) share: the check, its runner and timer."""

    chk: _Check
    variant: str
    runner: Any
    timer: StageTimer
    precision: str

    @property
    def entry(self) -> dict[str, Any]:
        """The variant's part of the report."""
        return self.chk.report["variants"][self.variant]


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
        "variant": ctx.variant,
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
        entry["gmacs"] = model_stage_gmacs(ctx.variant, h, w, video.objects, runner.capacity)
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
    ctx.entry["configs"].append(entry)
    busy = f", device busy {device['total']['mean']:.2f} ms" if device else ""
    peak = f", peak {entry['peak_device_mb']:.0f} MiB" if cuda else ""
    logger.info(
        f"[{chk._t()}] {ctx.variant} {precision} {label}: {wall['total']['mean']:8.2f} ms/frame "
        f"wall ({wall['total']['fps']:.1f} FPS){busy}{peak}"
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


def filled_bank(runner: Any, video: SyntheticVideo):
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
    frame_dev, n = filled_bank(runner, video)
    query = runner.encode_query(frame_dev)
    stages = {
        "query_encoder": lambda: runner.encode_query(frame_dev),
        "read_decoder": lambda: runner.read_decode(query, n),
    }
    entry: dict[str, Any] = {
        "variant": ctx.variant,
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
    ctx.entry["cuda_graphs"].append(entry)
    logger.info(
        f"[{chk._t()}] {ctx.variant} {precision} {label} CUDA graphs: "
        + ", ".join(
            f"{k} {v['eager']['mean']:.2f} -> {v['graph']['mean']:.2f} ms (x{v['speedup']:.2f})"
            for k, v in entry["stages"].items()
        )
    )
    return entry


def video_labels(
    runner: Any, video: SyntheticVideo, frames: int, deadline: float | None = None
) -> dict[str, Any]:
    """Label maps of a short video two ways, frame by frame, and obj_probs at one step.

    "propagated": the predictor's output (each frame's result feeds the next, so one flipped
    pixel can grow). "one_step": every frame read against the same bank (frame 0 with its true
    mask), which isolates the numerical difference of a precision or device from error
    accumulation. Both use the runner's one bank, so the predictor runs first and the one-step
    reads come after it.

    Args:
        runner: an opened runner.
        video: frames and the first label map (>= 1 object).
        frames: frames wanted (frame 0, the given mask, included).
        deadline: time.perf_counter() value after which fewer frames are taken (at least 3,
            the same number both ways); None: all `frames`.

    Returns:
        {"propagated": [(H, W) uint8], "one_step": [(H, W) uint8 slot ids], "slots": [1..n],
         "probs": (n, H, W) float32 obj_probs of frame 1 at one step, or None (1 frame)}.
    """
    pred = VideoPredictor(runner)
    pred.add_mask(0, video.first_label)
    propagated: list[np.ndarray] = []
    # The one-step reads repeat as many frames at about the same cost: half the time each.
    half = None if deadline is None else (time.perf_counter() + deadline) / 2
    for i in range(frames):
        propagated.append(pred.step(video.frame(i)))
        if half is not None and i >= 2 and time.perf_counter() > half:
            break
    frame_dev, n = filled_bank(runner, video)
    pad = padding_for(*video.frames[0].shape[:2], runner.stride)
    one_step, probs1 = [], None
    for i in range(len(propagated)):
        x = frame_to_input(video.frame(i), pad)
        probs, labels = runner.read_decode(runner.encode_query(runner.upload(x)), n)
        one_step.append(runner.download(labels))  # slot k = k-th object id, same in every run
        if i == 1:
            probs1 = runner.download(probs)
    return {
        "propagated": propagated,
        "one_step": one_step,
        "slots": list(range(1, n + 1)),
        "probs": probs1,
    }


def precision_pass(
    chk: _Check,
    variant: str,
    model: Any,
    precision: str,
    videos: Callable,
    labels: dict[str, dict],
) -> None:
    """Load `model` for `precision` on the check's device, then latency and CUDA graphs at every
    resolution and the label maps of the first resolution (into labels[precision])."""
    from mlvos.runtime.backends.torch_backend import TorchRunner

    s, torch = chk.settings, chk.torch
    cuda = s.device.startswith("cuda")

    def load() -> TorchRunner:
        # TorchRunner converts the module it is given in place; the CPU FP32 runner leaves it
        # as it is, so only the device copies are copied (the master stays the CPU reference).
        own = model if (not cuda and precision == "fp32") else copy.deepcopy(model)
        return TorchRunner(own, device=s.device, precision=precision, capacity=s.capacity)

    runner = chk.section(f"{variant} {precision}: load", load)
    if runner is None:
        return
    timer = TorchCudaTimer(torch, runner.device) if cuda else WallTimer(runner.synchronize)
    ctx = _Pass(chk, variant, runner, timer, precision)
    with runner:
        # Every resolution's latency first, then every resolution's CUDA graphs.
        for what, measure, group in (
            ("latency", _latency, "latency"),
            ("cuda graphs", _cuda_graphs, "cuda_graphs"),
        ):
            for res in s.resolutions:
                name = f"{variant} {precision} {res}: {what}"
                if measure is _cuda_graphs and not cuda:
                    chk.skip(name, "needs CUDA", benign=True)
                    continue
                budget = chk.budget.take(group)
                chk.section(
                    name,
                    lambda measure=measure, res=res, budget=budget: measure(
                        ctx, res, videos(res, s.objects), min(budget, chk.left())
                    ),
                    group=group,
                )
        res = s.resolutions[0]
        budget = chk.budget.take("labels")
        chk.section(
            f"{variant} {precision} {res}: labels",
            lambda: labels.setdefault(
                precision,
                video_labels(
                    runner,
                    videos(res, max(2, s.objects)),
                    s.agreement_frames,
                    time.perf_counter() + min(budget, chk.left()),
                ),
            ),
            group="labels",
        )
    runner.model = runner.bank_key = runner.bank_value = None  # free device memory now
    chk.free()
