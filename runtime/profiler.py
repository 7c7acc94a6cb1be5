"""Latency profiling of the runtime: per-stage timers, synthetic videos, sweeps and reports.

What `mlvos profile` measures (see run_profile):
- per stage (runtime.predictor.STAGES) and end to end: mean, p50, p90, p99 and FPS after warm-up,
  for each resolution and object count, driving VideoPredictor with synthetic frames;
- read+decode latency against the number of valid memory slots (1..capacity);
- a long run: latency against the frame index (flatness of the bounded memory) and RSS growth;
- peak host RSS and peak device memory; GMACs per stage and achieved TFLOP/s.

Timing. The predictor's wall clock (it synchronizes the device between stages) is always
recorded. On a device with asynchronous execution a StageTimer also records device time: every
runner call is bracketed by two timer marks (TimedRunner). `timer_for` picks CUDA events for the
torch backend on CUDA and the wall clock elsewhere; a backend provides its own timer by defining
`make_timer() -> StageTimer` on its Runner (e.g. CUDA events recorded on the TensorRT stream).

numpy only at import time; torch, onnx and matplotlib are imported where they are needed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import InputError, MlvosError
from mlvos.runtime.predictor import STAGES, VideoPredictor
from mlvos.runtime.spec import DEFAULT_MEM_EVERY, pad_array, padded_size, padding_for

REPORT_FORMAT = "mlvos-profile"
REPORT_VERSION = 1
# Named resolutions: (height, width) of the frames fed to the predictor (padded inside it).
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "480p": (480, 854),
    "720p": (720, 1280),
    "1080p": (1080, 1920),
}
# The per-stage times must add up to the end-to-end time within this fraction.
STAGE_SUM_TOLERANCE = 0.10
# A long run is "flat" when the mean latency of its last 100 frames is at most this much above
# that of frames 11..110 (the runtime issue's acceptance bar; windows shrink for shorter runs).
FLATNESS_TOLERANCE = 1.05
FLATNESS_WINDOW = 100
FLATNESS_START = 10
WORK_STAGES = tuple(s for s in STAGES if s != "total")
# Graph whose MACs each predictor stage executes (the other stages run no graph).
STAGE_GRAPH = {
    "query_encoder": "query_encoder",
    "memory_encoder": "memory_encoder",
    "read_decoder": "read_decoder",
}

Log = Callable[[str], None]


def parse_resolution(text: str) -> tuple[str, int, int]:
    """ "480p" | "720p" | "1080p" | "HxW" -> (label, height, width)."""
    text = text.strip()
    if text in RESOLUTIONS:
        return (text, *RESOLUTIONS[text])
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(
            f"resolution {text!r} is not one of {', '.join(RESOLUTIONS)} or HEIGHTxWIDTH"
        ) from None
    if h < 32 or w < 32:
        raise InputError(f"resolution {text!r}: both sides must be >= 32")
    return (f"{h}x{w}", h, w)


# ------------------------------------------------------------------------------------ timers
class StageTimer(ABC):
    """Measures spans of work: `a = mark(); ...; b = mark(); elapsed_ms(a, b)`.

    `kind` is "wall" (host clock after a device synchronize) or "device" (events on the device's
    timeline, e.g. CUDA events). Marks are cheap; `elapsed_ms` may wait for the device, so call it
    after the frame, not between stages.
    """

    kind: str = "wall"
    name: str = "wall clock"

    @abstractmethod
    def mark(self) -> Any:
        """Record a point in time (on the host or in the device's stream)."""

    @abstractmethod
    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks."""


class WallTimer(StageTimer):
    """time.perf_counter after `sync()` (the runner's synchronize: a no-op on CPU backends)."""

    kind, name = "wall", "wall clock (perf_counter after synchronize)"

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync

    def mark(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3


class TorchCudaTimer(StageTimer):
    """CUDA events recorded on torch's current stream of `device`."""

    kind, name = "device", "CUDA events (torch.cuda.Event)"

    def __init__(self, torch: Any, device: Any):
        self.torch, self.device = torch, device

    def mark(self) -> Any:
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record(self.torch.cuda.current_stream(self.device))
        return ev

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))


def timer_for(runner: Any) -> StageTimer:
    """The most precise timer for a runner: its own `make_timer()`, CUDA events for torch on
    CUDA, else the wall clock after `runner.synchronize()`."""
    make = getattr(runner, "make_timer", None)
    if callable(make):
        return make()
    device = getattr(runner, "device", None)
    if getattr(runner, "name", "") == "torch" and getattr(device, "type", "") == "cuda":
        return TorchCudaTimer(runner.torch, device)
    return WallTimer(getattr(runner, "synchronize", None))


class TimedRunner:
    """A Runner proxy that brackets each call with timer marks and attributes it to a stage.

    The predictor's stages map to runner calls: preprocess = upload, query_encoder =
    encode_query, read_decoder = read_decode (aggregation included), memory_encoder =
    encode_memory + write_slot + set_valid, postprocess = download. Host-only work (padding,
    the id lookup) has no device time.
    """

    CALL_STAGES = {
        "upload": "preprocess",
        "encode_query": "query_encoder",
        "read_decode": "read_decoder",
        "encode_memory": "memory_encoder",
        "write_slot": "memory_encoder",
        "set_valid": "memory_encoder",
        "download": "postprocess",
    }

    def __init__(self, runner: Any, timer: StageTimer):
        self._runner = runner
        self._timer = timer
        self._spans: list[tuple[str, Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._runner, name)
        stage = self.CALL_STAGES.get(name)
        if stage is None or not callable(attr):
            return attr

        def timed(*args, **kwargs):
            start = self._timer.mark()
            out = attr(*args, **kwargs)
            self._spans.append((stage, start, self._timer.mark()))
            return out

        return timed

    def collect(self) -> dict[str, float]:
        """Milliseconds per stage since the last collect; "total" = their sum (device busy)."""
        per = dict.fromkeys(STAGES, 0.0)
        for stage, a, b in self._spans:
            per[stage] += self._timer.elapsed_ms(a, b)
        per["total"] = sum(per[s] for s in WORK_STAGES)
        self._spans.clear()
        return per


# ---------------------------------------------------------------------------- memory probes
def _proc_status() -> dict[str, float]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return out


def host_memory() -> dict[str, float]:
    """{"rss_mb": current RSS, "peak_rss_mb": peak RSS (since the last reset_peak_rss)} in MiB."""
    st = _proc_status()
    if "VmRSS" in st and "VmHWM" in st:
        return {"rss_mb": st["VmRSS"], "peak_rss_mb": st["VmHWM"]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes vs kB
    return {"rss_mb": float("nan"), "peak_rss_mb": peak_mb}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class DeviceMemoryProbe:
    """Peak device memory of a torch CUDA device (torch.cuda.max_memory_allocated)."""

    def __init__(self, torch: Any, device: Any):
        self.torch, self.device = torch, device

    def reset(self) -> None:
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float:
        return self.torch.cuda.max_memory_allocated(self.device) / 2**20


def device_memory_probe(runner: Any) -> Any | None:
    """The runner's own `device_memory_probe()` if it has one, torch's for torch on CUDA, or
    None (host memory only)."""
    own = getattr(runner, "device_memory_probe", None)
    if callable(own):
        return own()
    device = getattr(runner, "device", None)
    if getattr(runner, "name", "") == "torch" and getattr(device, "type", "") == "cuda":
        return DeviceMemoryProbe(runner.torch, device)
    return None


# ------------------------------------------------------------------------------- statistics
def summarize(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, std, min, p50, p90, p99, max (ms) and fps = 1000 / mean."""
    a = np.asarray(values_ms, np.float64)
    if a.size == 0:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "fps": None}
    mean = float(a.mean())
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {
        "n": int(a.size),
        "mean": mean,
        "std": float(a.std()),
        "min": float(a.min()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": float(a.max()),
        "fps": 1e3 / mean if mean > 0 else None,
    }


def stage_sum_check(stats: dict[str, dict], tolerance: float = STAGE_SUM_TOLERANCE) -> dict:
    """Do the mean per-stage times add up to the mean end-to-end time?"""
    total = stats["total"]["mean"]
    parts = sum(stats[s]["mean"] or 0.0 for s in WORK_STAGES)
    rel = abs(parts - total) / total if total else float("inf")
    return {"sum_ms": parts, "total_ms": total, "rel_diff": rel, "ok": bool(rel <= tolerance)}


# -------------------------------------------------------------------------- synthetic video
@dataclass
class SyntheticVideo:
    """A few distinct frames, cycled to any length, and the first frame's label map.

    Attributes:
        frames: (H, W, 3) uint8 RGB frames.
        first_label: (H, W) uint8 ids of frame 0 (0 = background).
        objects: ids present in first_label.
        source: generator used ("mlvos.data.synth" or the numpy fallback).
    """

    frames: list[np.ndarray]
    first_label: np.ndarray
    objects: int
    source: str

    def frame(self, index: int) -> np.ndarray:
        return self.frames[index % len(self.frames)]


def _disc_video(seed: int, count: int, height: int, width: int, objects: int):
    """Fallback without OpenCV: textured discs moving over a noisy gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (40 + 80 * (xx / width))[..., None] + rng.normal(0, 12, (height, width, 3))
    r = 0.12 * min(height, width)
    start = rng.uniform([r, r], [height - r, width - r], (objects, 2))
    vel = rng.uniform(-0.01, 0.01, (objects, 2)) * [height, width]
    colors = rng.uniform(80, 255, (objects, 3))
    for t in range(count):
        img, lab = base.copy(), np.zeros((height, width), np.uint8)
        for k in range(objects):
            cy, cx = start[k] + vel[k] * t
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[m] = colors[k] * (0.8 + 0.2 * np.sin(xx[m] / 7.0))[:, None]
            lab[m] = k + 1
        yield np.clip(img, 0, 255).astype(np.uint8), lab


def synthetic_video(
    seed: int, height: int, width: int, objects: int, *, unique: int = 12
) -> SyntheticVideo:
    """`unique` frames of a synthetic video (mlvos.data.synth; a numpy fallback without cv2) in
    which `objects` objects are visible in frame 0 (a few seeds are tried)."""
    try:
        from mlvos.data.synth import synth_sequence

        source, gen = "mlvos.data.synth", synth_sequence
    except ImportError:
        source, gen = "numpy discs (mlvos.data.synth needs opencv)", None
    best = None
    for attempt in range(6):
        s = seed + 1000 * attempt
        pairs = list(
            gen(s, unique, height, width, num_objects=objects)
            if gen
            else _disc_video(s, unique, height, width, objects)
        )
        present = int(np.count_nonzero(np.unique(pairs[0][1])))
        if best is None or present > best.objects:
            best = SyntheticVideo([f for f, _ in pairs], pairs[0][1], present, source)
        if present >= objects:
            break
    return best


# ------------------------------------------------------------------------------ measurements
@dataclass
class RunTimings:
    """Per-frame milliseconds of a predictor run (every frame, the annotated frame 0 included).

    `skip` frames (frame 0 + warm-up) are excluded from statistics.
    """

    wall: dict[str, list[float]]
    device: dict[str, list[float]] | None
    skip: int
    rss_after_warmup_mb: float | None = None

    def timed(self, which: str = "wall") -> dict[str, list[float]]:
        src = self.wall if which == "wall" else self.device
        return {s: v[self.skip :] for s, v in src.items()}


def run_video(
    runner: Any,
    video: SyntheticVideo,
    *,
    frames: int,
    warmup: int,
    timer: StageTimer | None = None,
    mem_every: int = DEFAULT_MEM_EVERY,
    deadline: float | None = None,
    min_frames: int = 3,
) -> RunTimings:
    """Propagate the first-frame mask through `frames` frames after the annotated one.

    Args:
        runner: an opened Runner.
        video: frames and the first label (all objects of frame 0 are tracked).
        frames: propagated frames (warm-up included), excluding the annotated frame 0.
        warmup: propagated frames discarded before statistics.
        timer: a device timer (kind "device") adds per-stage device times; wall timers add
            nothing over the predictor's own clock and are ignored.
        deadline: time.perf_counter() value after which the run stops early (once warm-up and
            `min_frames` timed frames are done).
    """
    timed = TimedRunner(runner, timer) if timer is not None and timer.kind != "wall" else None
    pred = VideoPredictor(timed or runner, mem_every=mem_every, profile=True)
    pred.add_mask(0, video.first_label)
    device = {s: [] for s in STAGES} if timed else None
    rss_after = None
    skip = 1 + warmup
    for i in range(1 + frames):
        pred.step(video.frame(i))
        if timed:
            for s, v in timed.collect().items():
                device[s].append(v)
        if i + 1 == skip:
            rss_after = host_memory()["rss_mb"]
        if deadline is not None and i + 1 >= skip + min_frames and time.perf_counter() > deadline:
            break
    return RunTimings(pred.timings, device, skip, rss_after)


def time_read_decode(
    runner: Any,
    video: SyntheticVideo,
    *,
    slots: Sequence[int],
    warmup: int,
    iters: int,
    timer: StageTimer,
) -> dict[int, list[float]]:
    """Milliseconds of read_decode with the bank filled to k valid slots, for k in `slots`.

    The bank is filled with the memory encoding of frame 0 (every object of its label) and the
    query is frame 0's; the stages are called directly, without the predictor.
    """
    frame = video.frames[0]
    h, w = frame.shape[:2]
    pad = padding_for(h, w, runner.stride)
    x = pad_array(np.ascontiguousarray(frame.transpose(2, 0, 1)), pad)[None]
    ids = [int(i) for i in np.unique(video.first_label) if i]
    label = pad_array(video.first_label, pad)
    probs = np.stack([(label == i) for i in ids]).astype(np.float32)
    n, cap = len(ids), runner.capacity
    runner.allocate_bank(n, *x.shape[-2:])
    frame_dev = runner.upload(x)
    key, value = runner.encode_memory(frame_dev, runner.upload(probs))
    query = runner.encode_query(frame_dev)
    out: dict[int, list[float]] = {}
    for k in slots:
        if not 1 <= k <= cap:
            raise InputError(f"memory slots {k} outside 1..capacity ({cap})")
        for s in range(k):
            runner.write_slot(s, key, value, n)
        valid = np.zeros((n, cap), np.float32)
        valid[:, :k] = 1.0
        runner.set_valid(valid)
        times = []
        for i in range(warmup + iters):
            a = timer.mark()
            runner.read_decode(query, n)
            b = timer.mark()
            if i >= warmup:
                times.append(timer.elapsed_ms(a, b))
        out[k] = times
    return out


# ------------------------------------------------------------------------------------ GMACs
class MacCounter:
    """GMACs per predictor stage at a padded size and object count, cached.

    ONNX graphs (runtime.onnx_macs) for an export; mlvos.model.flops for the torch backend on a
    checkpoint. Errors (e.g. onnx not installed) are kept in `error` and yield None.
    """

    def __init__(self, runner: Any):
        self.runner = runner
        manifest = getattr(runner, "manifest", None)
        self.source = "onnx graphs (runtime.onnx_macs)" if manifest else "torch (model.flops)"
        self.error: str | None = None
        self._cache: dict[tuple[int, int, int], dict[str, float] | None] = {}

    def _count(self, h: int, w: int, objects: int) -> dict[str, float]:
        manifest = getattr(self.runner, "manifest", None)
        if manifest is not None:
            from mlvos.runtime.onnx_macs import stage_macs

            m = stage_macs(manifest, height=h, width=w, objects=objects)
            g = {name: v.gmacs for name, v in m.items()}
        else:
            from mlvos.model.flops import stage_costs  # torch backend: torch is there

            c = stage_costs(self.runner.model.variant, h, w, self.runner.capacity)
            g = {
                "query_encoder": c.query_gmac,
                "memory_encoder": objects * c.memory_gmac,
                "read_decoder": objects * c.read_decode_gmac,
            }
        out = {s: g.get(STAGE_GRAPH.get(s, ""), 0.0) for s in WORK_STAGES}
        out["total"] = sum(out.values())
        return out

    def gmacs(self, h: int, w: int, objects: int) -> dict[str, float] | None:
        key = (h, w, objects)
        if key not in self._cache:
            try:
                self._cache[key] = self._count(h, w, objects)
            except (MlvosError, ImportError, KeyError, ValueError) as e:
                self.error = f"{type(e).__name__}: {e}"
                self._cache[key] = None
        return self._cache[key]


def tflops(gmacs: dict[str, float] | None, stats: dict[str, dict]) -> dict[str, float | None]:
    """Achieved TFLOP/s per stage: 2 * MACs / mean time."""
    if not gmacs:
        return {}
    out = {}
    for s, g in gmacs.items():
        ms = stats.get(s, {}).get("mean")
        out[s] = 2 * g * 1e9 / (ms * 1e-3) / 1e12 if ms and g else None
    return out


# ---------------------------------------------------------------------------------- profile
@dataclass(frozen=True)
class ProfileConfig:
    """What `mlvos profile` sweeps (see its --help for each field)."""

    model: str
    backend: str = "ort"
    precision: str = "fp32"
    device: str = "cpu"
    resolutions: tuple[str, ...] = ("480p", "720p", "1080p")
    objects: tuple[int, ...] = (1, 2, 4)
    memory: tuple[int, ...] | None = None  # valid slots; None = 1..capacity
    long: int = 200
    warmup: int = 3
    iters: int = 20
    threads: int | None = None
    seed: int = 0
    mem_every: int = DEFAULT_MEM_EVERY
    unique_frames: int = 12
    capacity: int | None = None  # memory slots of a bare torch checkpoint
    cuda_graph: bool = False  # passed to open_runner (trt) only when set

    def check(self) -> None:
        """Raises InputError on a value that cannot be profiled."""
        for r in self.resolutions:
            parse_resolution(r)
        if not self.resolutions:
            raise InputError("give at least one resolution (--resolutions 480p)")
        if not self.objects or any(k < 1 for k in self.objects):
            raise InputError(f"object counts must be >= 1, got {list(self.objects)}")
        if self.warmup < 0 or self.iters < 1 or self.long < 0:
            raise InputError("need --warmup >= 0, --iters >= 1 and --long >= 0")
        if self.unique_frames < 2:
            raise InputError("unique_frames must be >= 2")


@dataclass
class _Context:
    config: ProfileConfig
    runner: Any
    timer: StageTimer
    devmem: Any
    macs: MacCounter
    log: Log
    videos: dict[tuple[int, int, int], SyntheticVideo] = field(default_factory=dict)

    def video(self, h: int, w: int, objects: int) -> SyntheticVideo:
        key = (h, w, objects)
        if key not in self.videos:
            self.videos.clear()  # one at a time: 1080p frames are 6 MB each
            self.videos[key] = synthetic_video(
                self.config.seed, h, w, objects, unique=self.config.unique_frames
            )
        return self.videos[key]


def _static_mismatch(runner: Any, h: int, w: int) -> str | None:
    static = getattr(getattr(runner, "manifest", None), "static_size", None)
    ph, pw = padded_size(h, w, runner.stride)
    if static and tuple(static) != (ph, pw):
        return f"static export {static[0]}x{static[1]} cannot run {ph}x{pw}"
    return None


def _measure(ctx: _Context, label: str, h: int, w: int, objects: int) -> dict[str, Any]:
    """One (resolution, objects) configuration through the predictor."""
    cfg, runner = ctx.config, ctx.runner
    ph, pw = padded_size(h, w, runner.stride)
    entry: dict[str, Any] = {
        "resolution": label,
        "height": h,
        "width": w,
        "padded": [ph, pw],
        "objects": objects,
    }
    why = _static_mismatch(runner, h, w)
    if why:
        ctx.log(f"  skip {label}: {why}")
        return {**entry, "skipped": why}
    video = ctx.video(h, w, objects)
    if video.objects != objects:
        entry["objects_visible"] = video.objects
    reset_peak_rss()
    if ctx.devmem is not None:
        ctx.devmem.reset()
    t0 = time.perf_counter()
    run = run_video(
        runner,
        video,
        frames=cfg.warmup + cfg.iters,
        warmup=cfg.warmup,
        timer=ctx.timer,
        mem_every=cfg.mem_every,
    )
    entry["seconds"] = time.perf_counter() - t0
    wall = {s: summarize(v) for s, v in run.timed("wall").items()}
    entry["wall"] = wall
    entry["device"] = (
        {s: summarize(v) for s, v in run.timed("device").items()} if run.device else None
    )
    entry["frames_timed"] = wall["total"]["n"]
    entry["stage_sum_check"] = stage_sum_check(wall)
    gm = ctx.macs.gmacs(ph, pw, video.objects)
    entry["gmacs"] = gm
    entry["tflops"] = tflops(gm, entry["device"] or wall)
    mem = host_memory()
    entry["peak_rss_mb"] = mem["peak_rss_mb"]
    if run.rss_after_warmup_mb is not None:
        entry["rss_growth_after_warmup_mb"] = mem["rss_mb"] - run.rss_after_warmup_mb
    entry["peak_device_mb"] = ctx.devmem.peak_mb() if ctx.devmem is not None else None
    if run.device:
        # Without the per-stage synchronization: what a pipelined application sees.
        quick = run_video(runner, video, frames=cfg.iters, warmup=0, mem_every=cfg.mem_every)
        entry["unsynced_total_ms"] = summarize(quick.timed("wall")["total"])
    ctx.log(
        f"  {label:>9} x{objects}: {wall['total']['mean']:9.2f} ms/frame "
        f"({wall['total']['fps']:.2f} FPS, p90 {wall['total']['p90']:.2f} ms) "
        f"stage sum {entry['stage_sum_check']['rel_diff'] * 100:.1f}% off"
    )
    return entry


def _memory_sweep(ctx: _Context, label: str, h: int, w: int, objects: int) -> dict[str, Any]:
    cfg, runner = ctx.config, ctx.runner
    cap = runner.capacity
    slots = list(cfg.memory) if cfg.memory else list(range(1, cap + 1))
    bad = [k for k in slots if not 1 <= k <= cap]
    if bad:
        raise InputError(f"--memory values {bad} outside 1..capacity ({cap}) of this model")
    ph, pw = padded_size(h, w, runner.stride)
    result: dict[str, Any] = {
        "resolution": label,
        "height": h,
        "width": w,
        "padded": [ph, pw],
        "objects": objects,
        "capacity": cap,
        "timer": ctx.timer.kind,
        "note": "bank of static capacity T with k valid slots (empty slots masked), so the "
        "read cost is bounded by T whatever the video length",
    }
    why = _static_mismatch(runner, h, w)
    if why:
        return {**result, "skipped": why}
    video = ctx.video(h, w, objects)
    times = time_read_decode(
        runner, video, slots=slots, warmup=max(1, cfg.warmup), iters=cfg.iters, timer=ctx.timer
    )
    gm = ctx.macs.gmacs(ph, pw, video.objects)
    points = []
    for k, v in times.items():
        st = summarize(v)
        g = gm["read_decoder"] if gm else None
        points.append(
            {
                "valid_slots": k,
                "read_decoder": st,
                "gmacs": g,
                "tflops": 2 * g * 1e9 / (st["mean"] * 1e-3) / 1e12 if g and st["mean"] else None,
            }
        )
        ctx.log(f"  {k}/{cap} slots: read+decode {st['mean']:8.2f} ms (p90 {st['p90']:.2f})")
    result["points"] = points
    return result


def _long_run(ctx: _Context, label: str, h: int, w: int, objects: int) -> dict[str, Any]:
    cfg, runner = ctx.config, ctx.runner
    result: dict[str, Any] = {"resolution": label, "height": h, "width": w, "objects": objects}
    why = _static_mismatch(runner, h, w)
    if why:
        return {**result, "skipped": why}
    video = ctx.video(h, w, objects)
    warm = min(cfg.warmup, max(0, cfg.long - 2))
    run = run_video(
        runner, video, frames=cfg.long, warmup=warm, timer=ctx.timer, mem_every=cfg.mem_every
    )
    rss_end = host_memory()["rss_mb"]
    per_frame = run.wall["total"]
    timed = per_frame[run.skip :]
    n = len(timed)
    win = max(1, min(FLATNESS_WINDOW, n // 5))
    start = min(FLATNESS_START, max(0, n - 2 * win))
    early, late = timed[start : start + win], timed[-win:]
    ratio = float(np.mean(late) / np.mean(early)) if n else None
    ratio_median = float(np.median(late) / np.median(early)) if n else None
    result.update(
        {
            "frames": len(per_frame),
            "warmup": run.skip,
            "mem_every": cfg.mem_every,
            "per_frame_ms": per_frame,
            "device_per_frame_ms": run.device["total"] if run.device else None,
            "stats": summarize(timed),
            "early": {
                "first": run.skip + start,
                "last": run.skip + start + win - 1,
                "mean_ms": float(np.mean(early)),
                "median_ms": float(np.median(early)),
            },
            "late": {
                "first": len(per_frame) - win,
                "last": len(per_frame) - 1,
                "mean_ms": float(np.mean(late)),
                "median_ms": float(np.median(late)),
            },
            "late_over_early": ratio,
            "late_over_early_median": ratio_median,
            # Decided on means, as the acceptance bar says; on a shared machine compare with the
            # median ratio and the plot before blaming the memory (load steps show as plateaus).
            "flat": bool(ratio is not None and ratio <= FLATNESS_TOLERANCE),
            "flatness_tolerance": FLATNESS_TOLERANCE,
            "rss_mb_after_warmup": run.rss_after_warmup_mb,
            "rss_mb_end": rss_end,
            "rss_growth_mb": rss_end - run.rss_after_warmup_mb
            if run.rss_after_warmup_mb is not None
            else None,
        }
    )
    ctx.log(
        f"  {len(per_frame)} frames: early {result['early']['mean_ms']:.2f} ms, late "
        f"{result['late']['mean_ms']:.2f} ms (mean x{ratio:.3f}, median x{ratio_median:.3f}), "
        "RSS growth "
        f"{result['rss_growth_mb']:+.1f} MiB"
    )
    return result


def _model_info(runner: Any, config: ProfileConfig) -> dict[str, Any]:
    info: dict[str, Any] = {
        "path": os.fspath(config.model),
        "backend": config.backend,
        "precision": config.precision,
        "device": config.device,
        "stride": runner.stride,
        "capacity": runner.capacity,
        "aggregation": "inside read_decoder (ONNX graph / TorchRunner.read_decode)",
    }
    manifest = getattr(runner, "manifest", None)
    if manifest is not None:
        info["variant"] = (manifest.data.get("checkpoint") or {}).get("variant")
        info["static_size"] = manifest.static_size
        info["checkpoint_sha256"] = (manifest.data.get("checkpoint") or {}).get("sha256")
    model = getattr(runner, "model", None)
    if model is not None:
        info["variant"] = getattr(model, "variant", None)
        info["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        info["channels_last"] = getattr(runner, "channels_last", None)
        info["torch_threads"] = runner.torch.get_num_threads()
    if config.threads:
        info["threads"] = config.threads
    return info


def run_profile(config: ProfileConfig, *, log: Log | None = print) -> dict[str, Any]:
    """Run every sweep of `config` and return the report (see write_report for the files).

    Raises:
        InputError: bad sweep values; ManifestError / CheckpointError: bad model.
    """
    from mlvos.envinfo import collect
    from mlvos.runtime.loader import open_runner

    config.check()
    log = log or (lambda _msg: None)
    start = time.perf_counter()
    res = [parse_resolution(r) for r in config.resolutions]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "config": asdict(config),
        "env": collect(),
        "stages": list(STAGES),
        "cpu_count": os.cpu_count(),
    }
    runner = open_runner(
        config.model,
        backend=config.backend,
        precision=config.precision,
        device=config.device,
        threads=config.threads,
        capacity=config.capacity,
        **({"cuda_graph": True} if config.cuda_graph else {}),
    )
    with runner:
        if config.backend == "torch" and config.threads:
            runner.torch.set_num_threads(config.threads)
        bad = [k for k in config.memory or () if not 1 <= k <= runner.capacity]
        if bad:  # checked before the first sweep, not after minutes of it
            raise InputError(
                f"--memory values {bad} outside 1..capacity ({runner.capacity}) of this model"
            )
        ctx = _Context(
            config, runner, timer_for(runner), device_memory_probe(runner), MacCounter(runner), log
        )
        report["model"] = _model_info(runner, config)
        report["timer"] = {
            "kind": ctx.timer.kind,
            "name": ctx.timer.name,
            "wall": "per-stage wall clock of VideoPredictor(profile=True), which synchronizes "
            "the device between stages",
        }
        base_label, bh, bw = res[0]
        base_objects = config.objects[0]
        why = _static_mismatch(runner, bh, bw)
        if why:  # the first resolution drives every other sweep
            static = runner.manifest.static_size
            raise InputError(
                f"{why}; put a resolution it runs first, e.g. --resolutions "
                f"{static[0]}x{static[1]}, or export with dynamic H/W"
            )
        log(
            f"resolution sweep ({base_objects} object(s), {config.warmup} warm-up + "
            f"{config.iters} timed frames each)"
        )
        report["resolution_sweep"] = [_measure(ctx, lab, h, w, base_objects) for lab, h, w in res]
        log(f"object sweep at {base_label}")
        sweep = []
        for k in config.objects:
            if k == base_objects:
                sweep.append(report["resolution_sweep"][0])
            else:
                sweep.append(_measure(ctx, base_label, bh, bw, k))
        report["object_sweep"] = sweep
        log(f"memory sweep at {base_label} ({base_objects} object(s)): read+decode vs valid slots")
        report["memory_sweep"] = _memory_sweep(ctx, base_label, bh, bw, base_objects)
        if config.long:
            log(f"long run: {config.long} frames at {base_label}")
            report["long_run"] = _long_run(ctx, base_label, bh, bw, base_objects)
        else:
            report["long_run"] = None
        report["efficiency"] = {"source": ctx.macs.source, "error": ctx.macs.error}
        report["videos"] = {
            "source": next(iter(ctx.videos.values())).source if ctx.videos else None,
            "unique_frames": config.unique_frames,
        }
    report["memory"] = {
        "peak_rss_mb": max(
            [e.get("peak_rss_mb") or 0 for e in report["resolution_sweep"] + sweep]
            + [host_memory()["peak_rss_mb"]]
        ),
        "peak_device_mb": max(
            [e.get("peak_device_mb") or 0 for e in report["resolution_sweep"] + sweep]
        )
        or None,
        "peak_rss_note": "VmHWM, reset before each configuration where the kernel allows",
    }
    report["checks"] = _checks(report)
    report["duration_s"] = time.perf_counter() - start
    return report


def _checks(report: dict[str, Any]) -> dict[str, Any]:
    details, seen = [], set()
    for e in report["resolution_sweep"] + report["object_sweep"]:
        key = (e["resolution"], e["objects"])
        if "stage_sum_check" in e and key not in seen:  # the object sweep repeats one entry
            seen.add(key)
            details.append({"resolution": key[0], "objects": key[1], **e["stage_sum_check"]})
    worst = max((d["rel_diff"] for d in details), default=None)
    long_run = report.get("long_run") or {}
    return {
        "stage_sum": {
            "ok": bool(details) and all(d["ok"] for d in details),
            "tolerance": STAGE_SUM_TOLERANCE,
            "worst_rel_diff": worst,
            "details": details,
        },
        "long_run_flat": long_run.get("flat"),
    }


# ---------------------------------------------------------------------------------- outputs
STAGE_COLORS = {
    "preprocess": "#9e9e9e",
    "query_encoder": "#1f77b4",
    "read_decoder": "#d62728",
    "memory_encoder": "#2ca02c",
    "postprocess": "#ff7f0e",
    "total": "#000000",
}


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


def stage_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One CSV row per (sweep, configuration, stage)."""
    rows = []
    for sweep in ("resolution_sweep", "object_sweep"):
        for e in report.get(sweep) or []:
            if "wall" not in e:
                continue
            for s in STAGES:
                st, dev = e["wall"][s], (e.get("device") or {}).get(s) or {}
                rows.append(
                    [
                        sweep,
                        e["resolution"],
                        e["height"],
                        e["width"],
                        e["objects"],
                        s,
                        st["n"],
                        st["mean"],
                        st["p50"],
                        st["p90"],
                        st["p99"],
                        st["fps"],
                        dev.get("mean"),
                        dev.get("p50"),
                        dev.get("p90"),
                        dev.get("p99"),
                        (e.get("gmacs") or {}).get(s),
                        (e.get("tflops") or {}).get(s),
                    ]
                )
    return rows


STAGE_HEADER = [
    "sweep",
    "resolution",
    "height",
    "width",
    "objects",
    "stage",
    "frames",
    "mean_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "fps",
    "device_mean_ms",
    "device_p50_ms",
    "device_p90_ms",
    "device_p99_ms",
    "gmacs",
    "tflops",
]


def write_report(report: dict[str, Any], out: str | os.PathLike, *, plots: bool = True) -> list:
    """Write report.json, stages.csv, memory_sweep.csv, long_run.csv and the PNG plots into
    `out`, each file atomically. Returns the written paths (plots are skipped with a message in
    the report when matplotlib is missing)."""
    from mlvos.fileio import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_text(out / "stages.csv", _csv_text(STAGE_HEADER, stage_rows(report)))
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
        atomic_write_text(out / "memory_sweep.csv", _csv_text(header, rows))
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
            _csv_text(["frame", "total_ms", "device_total_ms", "warmup"], rows),
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from mlvos.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def _subtitle(report: dict[str, Any]) -> str:
    m = report.get("model") or {}
    return (
        f"{m.get('variant', '?')} | {m.get('backend', '?')} {m.get('precision', '')} on "
        f"{m.get('device', '?')} | timer: {(report.get('timer') or {}).get('kind', '?')}"
    )


def _stage_lines(ax, entries: list[dict], xs: list, key: str = "wall") -> None:
    for s in STAGES:
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
    plt = _pyplot()
    out = Path(out)
    paths = []
    sub = _subtitle(report)
    res = [e for e in report.get("resolution_sweep") or [] if "wall" in e]
    if res:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        _stage_lines(
            ax, res, [f"{e['resolution']}\n{e['padded'][0]}x{e['padded'][1]}" for e in res]
        )
        ax.set_xlabel("resolution (padded size)")
        ax.set_title(f"Latency vs resolution ({res[0]['objects']} object(s))\n{sub}", fontsize=10)
        paths.append(_save(fig, out / "latency_vs_resolution.png"))
        plt.close(fig)
    objs = [e for e in report.get("object_sweep") or [] if "wall" in e]
    if objs:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        _stage_lines(ax, objs, [e["objects"] for e in objs])
        ax.set_xlabel("objects")
        ax.set_xticks([e["objects"] for e in objs])
        ax.set_title(f"Latency vs objects ({objs[0]['resolution']})\n{sub}", fontsize=10)
        paths.append(_save(fig, out / "latency_vs_objects.png"))
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
        paths.append(_save(fig, out / "latency_vs_memory.png"))
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
        paths.append(_save(fig, out / "latency_vs_frame.png"))
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
        paths.append(_save(fig, out / "stage_breakdown.png"))
        plt.close(fig)
    return paths


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
                for s in STAGES:
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
    else:  # gpu-check report
        for e in report.get("configs") or []:
            if "wall" not in e:
                continue
            tag = f"{e['precision']} {e['resolution']}"
            for s in STAGES:
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
        f"A: {_subtitle(a)}",
        f"B: {_subtitle(b)}",
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


def summary_table(report: dict[str, Any]) -> str:
    """A short text table of a profile report (printed at the end of `mlvos profile`)."""
    lines = [_subtitle(report)]
    head = f"{'config':<16}" + "".join(f"{s[:12]:>13}" for s in STAGES) + f"{'FPS':>8}{'GMAC':>8}"
    lines += [head, "-" * len(head)]
    seen = set()
    for e in (report.get("resolution_sweep") or []) + (report.get("object_sweep") or []):
        if "wall" not in e or id(e) in seen:
            continue
        seen.add(id(e))
        gm = (e.get("gmacs") or {}).get("total")
        lines.append(
            f"{e['resolution'] + ' x' + str(e['objects']):<16}"
            + "".join(f"{e['wall'][s]['mean']:13.2f}" for s in STAGES)
            + f"{e['wall']['total']['fps']:8.2f}"
            + (f"{gm:8.1f}" if gm else f"{'-':>8}")
        )
    chk = (report.get("checks") or {}).get("stage_sum") or {}
    if chk:
        lines.append(
            f"stage sum vs end to end: worst {100 * (chk['worst_rel_diff'] or 0):.2f}% "
            f"(tolerance {100 * chk['tolerance']:.0f}%): {'OK' if chk['ok'] else 'FAILED'}"
        )
    lr = report.get("long_run") or {}
    if lr.get("late_over_early") is not None:
        lines.append(
            f"long run: late/early mean {lr['late_over_early']:.3f}, median "
            f"{lr['late_over_early_median']:.3f} "
            f"({'flat' if lr['flat'] else 'NOT flat'}), RSS growth after warm-up "
            f"{lr['rss_growth_mb']:+.1f} MiB"
        )
    return "\n".join(lines)
