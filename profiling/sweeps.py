"""The sweeps of `mlvos profile`: resolutions, object counts, read+decode against the memory
fill and a long run, collected into one report (run_profile).

numpy only at import time; the runner's backend, torch and onnx are imported where needed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import InputError
from mlvos.profiling.content import profile_video
from mlvos.profiling.gemm import gemm_fractions, measure_gemm
from mlvos.profiling.measure import (
    STAGE_SUM_TOLERANCE,
    MacCounter,
    SyntheticVideo,
    run_video,
    stage_sum_check,
    summarize,
    tflops,
    time_read_decode,
)
from mlvos.profiling.probes import (
    StageTimer,
    device_memory_probe,
    host_memory,
    reset_peak_rss,
    timer_for,
)
from mlvos.profiling.report import REPORT_FORMAT, REPORT_VERSION
from mlvos.runtime.predictor import describe_schedule
from mlvos.runtime.spec import (  # noqa: F401 - RESOLUTIONS, parse_resolution re-exported
    DEFAULT_MEM_EVERY,
    RESOLUTIONS,
    TIMED_STAGES,
    padded_size,
    parse_resolution,
)

__all__ = [
    "FLATNESS_START",
    "FLATNESS_TOLERANCE",
    "FLATNESS_WINDOW",
    "RESOLUTIONS",
    "ProfileConfig",
    "parse_resolution",
    "run_profile",
]

# A long run is "flat" when the mean latency of its last 100 frames is at most this much above
# that of frames 11..110 (the runtime issue's acceptance bar; windows shrink for shorter runs).
FLATNESS_TOLERANCE = 1.05
FLATNESS_WINDOW = 100
FLATNESS_START = 10

logger = logging.getLogger(__name__)


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
    warmup: int | None = 3  # None: until the memory bank is full (steady_warmup)
    iters: int = 20
    threads: int | None = None
    seed: int = 0
    # memory schedule (VideoPredictor); None = the model's (runner.schedule), resolved by
    # run_profile once the runner is open
    mem_every: int | None = None
    prev_every: int | None = None
    unique_frames: int = 12
    capacity: int | None = None  # memory slots of a bare torch checkpoint
    cuda_graph: bool = False  # passed to open_runner (trt) only when set
    input: str | None = None  # real footage (video file or frames folder)
    mask: str | None = None  # its first frame's ids
    content: str = "natural"  # without input: "natural" (photo library) or "synthetic"

    def check(self) -> None:
        """Raises InputError on a value that cannot be profiled."""
        for r in self.resolutions:
            parse_resolution(r)
        if not self.resolutions:
            raise InputError("give at least one resolution (--resolutions 480p)")
        if not self.objects or any(k < 1 for k in self.objects):
            raise InputError(f"object counts must be >= 1, got {list(self.objects)}")
        if (self.warmup is not None and self.warmup < 0) or self.iters < 1 or self.long < 0:
            raise InputError("need --warmup >= 0, --iters >= 1 and --long >= 0")
        if self.unique_frames < 2:
            raise InputError("unique_frames must be >= 2")
        if self.input is not None and not Path(self.input).exists():
            raise InputError(f"--input {self.input}: no such file or folder")
        if self.mask is not None and not Path(self.mask).is_file():
            raise InputError(f"--mask {self.mask}: no such file")
        for name in ("mem_every", "prev_every"):
            n = getattr(self, name)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {n!r}")


def steady_warmup(config: ProfileConfig, capacity: int) -> int:
    """Discarded frames: config.warmup, or (None) as many as fill the memory bank, so that every
    timed frame reads a full bank as a long video does (the annotated frame, capacity - 2
    periodic frames, the previous frame)."""
    if config.warmup is not None:
        return config.warmup
    return max(1, (capacity - 2) * (config.mem_every or DEFAULT_MEM_EVERY) + 1)


@dataclass
class _Context:
    config: ProfileConfig
    runner: Any
    timer: StageTimer
    devmem: Any
    macs: MacCounter
    gemm: dict[str, Any] = field(default_factory=dict)  # the machine's GEMM rate (gemm.py)
    videos: dict[tuple[int, int, int], SyntheticVideo] = field(default_factory=dict)

    def video(self, h: int, w: int, objects: int) -> SyntheticVideo:
        key = (h, w, objects)
        if key not in self.videos:
            self.videos.clear()  # one at a time: 1080p frames are 6 MB each
            c = self.config
            # real footage: as many distinct frames as a configuration times (cycled beyond)
            warm = steady_warmup(c, self.runner.capacity)
            frames = max(c.unique_frames, 1 + warm + c.iters) if c.input else c.unique_frames
            self.videos[key] = profile_video(c.content, c.seed, h, w, objects, frames=frames,
                                             input=c.input, mask=c.mask)
        return self.videos[key]


def _static_mismatch(runner: Any, h: int, w: int) -> str | None:
    static = getattr(getattr(runner, "manifest", None), "static_size", None)
    ph, pw = padded_size(h, w, runner.stride)
    if static and tuple(static) != (ph, pw):
        return f"static export {static[0]}x{static[1]} cannot run {ph}x{pw}"
    return None


def _config_entry(runner: Any, label: str, h: int, w: int, objects: int) -> dict[str, Any]:
    """The keys that name a (resolution, objects) configuration in the report."""
    ph, pw = padded_size(h, w, runner.stride)
    return {"resolution": label, "height": h, "width": w, "padded": [ph, pw], "objects": objects}


def _measure(ctx: _Context, label: str, h: int, w: int, objects: int) -> dict[str, Any]:
    """One (resolution, objects) configuration through the predictor."""
    cfg, runner = ctx.config, ctx.runner
    entry = _config_entry(runner, label, h, w, objects)
    why = _static_mismatch(runner, h, w)
    if why:
        logger.info(f"  skip {label}: {why}")
        return {**entry, "skipped": why}
    video = ctx.video(h, w, objects)
    if video.objects != objects:
        entry["objects_visible"] = video.objects
    reset_peak_rss()
    if ctx.devmem is not None:
        ctx.devmem.reset()
    warm = steady_warmup(cfg, runner.capacity)
    t0 = time.perf_counter()
    run = run_video(
        runner,
        video,
        frames=warm + cfg.iters,
        warmup=warm,
        timer=ctx.timer,
        mem_every=cfg.mem_every,
        prev_every=cfg.prev_every,
    )
    entry["seconds"] = time.perf_counter() - t0
    wall = {s: summarize(v) for s, v in run.timed("wall").items()}
    entry["wall"] = wall
    entry["device"] = (
        {s: summarize(v) for s, v in run.timed("device").items()} if run.device else None
    )
    entry["frames_timed"] = wall["total"]["n"]
    entry["stage_sum_check"] = stage_sum_check(wall)
    gm = ctx.macs.gmacs(*entry["padded"], video.objects)
    share = run.memory_share()
    entry["memory_encoder_share"] = share
    if gm:  # per frame: the schedule runs the memory encoder on `share` of the frames
        gm = {**gm, "memory_encoder": gm["memory_encoder"] * share}
        gm["total"] = sum(v for s, v in gm.items() if s != "total")
    entry["gmacs"] = gm
    entry["tflops"] = tflops(gm, entry["device"] or wall)
    entry["gemm_fraction"] = gemm_fractions(entry["tflops"], ctx.gemm, cfg.precision)
    mem = host_memory()
    entry["peak_rss_mb"] = mem["peak_rss_mb"]
    if run.rss_after_warmup_mb is not None:
        entry["rss_growth_after_warmup_mb"] = mem["rss_mb"] - run.rss_after_warmup_mb
    entry["peak_device_mb"] = ctx.devmem.peak_mb() if ctx.devmem is not None else None
    if run.device:
        # Without the per-stage synchronization: what a pipelined application sees.
        quick = run_video(runner, video, frames=cfg.iters, warmup=0, mem_every=cfg.mem_every,
                          prev_every=cfg.prev_every)
        entry["unsynced_total_ms"] = summarize(quick.timed("wall")["total"])
    logger.info(
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
    result: dict[str, Any] = {
        **_config_entry(runner, label, h, w, objects),
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
        runner, video, slots=slots, warmup=max(1, cfg.warmup or 3), iters=cfg.iters, timer=ctx.timer
    )
    gm = ctx.macs.gmacs(*result["padded"], video.objects)
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
        logger.info(f"  {k}/{cap} slots: read+decode {st['mean']:8.2f} ms (p90 {st['p90']:.2f})")
    result["points"] = points
    return result


def _window(first: int, ms: list[float]) -> dict[str, Any]:
    """Frame indices (of the whole run) and mean / median latency of a window of the long run.

    Args:
        first: index of the window's first frame; the window is frames first..first+len(ms)-1.
        ms: their end-to-end latencies in milliseconds (at least one).
    """
    return {
        "first": first,
        "last": first + len(ms) - 1,
        "mean_ms": float(np.mean(ms)),
        "median_ms": float(np.median(ms)),
    }


def _long_run(ctx: _Context, label: str, h: int, w: int, objects: int) -> dict[str, Any]:
    cfg, runner = ctx.config, ctx.runner
    result: dict[str, Any] = {"resolution": label, "height": h, "width": w, "objects": objects}
    why = _static_mismatch(runner, h, w)
    if why:
        return {**result, "skipped": why}
    video = ctx.video(h, w, objects)
    warm = min(steady_warmup(cfg, runner.capacity), max(0, cfg.long - 2))
    run = run_video(
        runner, video, frames=cfg.long, warmup=warm, timer=ctx.timer, mem_every=cfg.mem_every,
        prev_every=cfg.prev_every,
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
            "early": _window(run.skip + start, early),
            "late": _window(len(per_frame) - win, late),
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
    logger.info(
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


def run_profile(config: ProfileConfig) -> dict[str, Any]:
    """Run every sweep of `config` and return the report (see write_report for the files).

    Raises:
        InputError: bad sweep values; ManifestError / CheckpointError: bad model.
    """
    from mlvos.envinfo import collect
    from mlvos.runtime.backends import open_runner

    config.check()
    start = time.perf_counter()
    res = [parse_resolution(r) for r in config.resolutions]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "config": asdict(config),
        "env": collect(),
        "stages": list(TIMED_STAGES),
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
        model_mem, model_prev = runner.schedule
        config = replace(config, mem_every=config.mem_every or model_mem,
                         prev_every=config.prev_every or model_prev)
        report["config"] = asdict(config)
        report["schedule"] = describe_schedule(config.mem_every, config.prev_every)
        bad = [k for k in config.memory or () if not 1 <= k <= runner.capacity]
        if bad:  # checked before the first sweep, not after minutes of it
            raise InputError(
                f"--memory values {bad} outside 1..capacity ({runner.capacity}) of this model"
            )
        ctx = _Context(
            config, runner, timer_for(runner), device_memory_probe(runner), MacCounter(runner)
        )
        report["model"] = _model_info(runner, config)
        logger.info("dense GEMM rate of this machine (the reference for each stage's rate)")
        ctx.gemm = measure_gemm(runner, config.backend, config.device, config.threads)
        report["gemm"] = ctx.gemm
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
        logger.info(
            f"resolution sweep ({base_objects} object(s), "
            f"{steady_warmup(config, runner.capacity)} warm-up + "
            f"{config.iters} timed frames each)"
        )
        report["resolution_sweep"] = [_measure(ctx, lab, h, w, base_objects) for lab, h, w in res]
        logger.info(f"object sweep at {base_label}")
        sweep = []
        for k in config.objects:
            if k == base_objects:
                sweep.append(report["resolution_sweep"][0])
            else:
                sweep.append(_measure(ctx, base_label, bh, bw, k))
        report["object_sweep"] = sweep
        logger.info(
            f"memory sweep at {base_label} ({base_objects} object(s)): read+decode vs valid slots"
        )
        report["memory_sweep"] = _memory_sweep(ctx, base_label, bh, bw, base_objects)
        if config.long:
            logger.info(f"long run: {config.long} frames at {base_label}")
            report["long_run"] = _long_run(ctx, base_label, bh, bw, base_objects)
        else:
            report["long_run"] = None
        report["efficiency"] = {"source": ctx.macs.source, "error": ctx.macs.error}
        report["videos"] = {
            "source": next(iter(ctx.videos.values())).source if ctx.videos else None,
            "unique_frames": config.unique_frames,
            "content": "input" if config.input else config.content,
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
