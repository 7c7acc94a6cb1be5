"""Measurements of a runner: statistics, synthetic videos, predictor runs, read+decode against
the memory fill, and GMACs / TFLOP/s per stage.

numpy only at import time; onnx (ONNX MAC counts) and torch (model.flops) where they are needed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlvos.errors import InputError, MlvosError
from mlvos.profiling.probes import StageTimer, host_memory
from mlvos.runtime.backends.recording import RecordingRunner
from mlvos.runtime.predictor import VideoPredictor
from mlvos.runtime.spec import (
    TIMED_STAGES,
    WORK_STAGES,
    frame_to_input,
    pad_array,
    padding_for,
)

__all__ = [
    "STAGE_GRAPH",
    "STAGE_SUM_TOLERANCE",
    "MacCounter",
    "RunTimings",
    "SyntheticVideo",
    "model_stage_gmacs",
    "run_video",
    "stage_sum_check",
    "summarize",
    "synthetic_video",
    "tflops",
    "time_read_decode",
]

# The per-stage times must add up to the end-to-end time within this fraction.
STAGE_SUM_TOLERANCE = 0.10
# Graph whose MACs each predictor stage executes (the other stages run no graph).
STAGE_GRAPH = {
    "query_encoder": "query_encoder",
    "memory_encoder": "memory_encoder",
    "read_decoder": "read_decoder",
}


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
    memory_steps: list[bool] | None = None  # per frame: the memory encoder ran

    def timed(self, which: str = "wall") -> dict[str, list[float]]:
        src = self.wall if which == "wall" else self.device
        return {s: v[self.skip :] for s, v in src.items()}

    def memory_share(self) -> float:
        """Share of the timed frames that ran the memory encoder (1.0 = every frame, STM's
        schedule; a schedule without a previous-frame slot runs it on 1 frame in mem_every)."""
        steps = (self.memory_steps or [])[self.skip :]
        return sum(steps) / len(steps) if steps else 1.0


def run_video(
    runner: Any,
    video: SyntheticVideo,
    *,
    frames: int,
    warmup: int,
    timer: StageTimer | None = None,
    mem_every: int | None = None,
    prev_every: int | None = None,
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
    device_timed = timer is not None and timer.kind != "wall"
    timed = RecordingRunner(runner, timer=timer) if device_timed else None
    pred = VideoPredictor(timed or runner, mem_every=mem_every, prev_every=prev_every,
                          profile=True)
    pred.add_mask(0, video.first_label)
    device = {s: [] for s in TIMED_STAGES} if timed else None
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
    return RunTimings(pred.timings, device, skip, rss_after, pred.memory_steps)


def frame0_memory(runner: Any, video: SyntheticVideo):
    """Allocate the bank for frame 0's objects and encode frame 0 as query and as memory.

    Returns:
        (frame on device, query, (mem_key, mem_value), object count); nothing is written yet.
    """
    frame = video.frames[0]
    pad = padding_for(*frame.shape[:2], runner.stride)
    x = frame_to_input(frame, pad)
    label = pad_array(video.first_label, pad)
    ids = [int(i) for i in np.unique(label) if i]
    probs = np.stack([(label == i) for i in ids]).astype(np.float32)
    runner.allocate_bank(len(ids), *x.shape[-2:])
    frame_dev = runner.upload(x)
    query = runner.encode_query(frame_dev)
    return frame_dev, query, runner.encode_memory(frame_dev, runner.upload(probs), query), len(ids)


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
    _, query, (key, value), n = frame0_memory(runner, video)
    cap = runner.capacity
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
        if manifest is None:  # torch backend: torch is there
            return model_stage_gmacs(self.runner.model.variant, h, w, objects, self.runner.capacity)
        from mlvos.profiling.onnx_macs import stage_macs

        m = stage_macs(manifest, height=h, width=w, objects=objects)
        return _per_stage({name: v.gmacs for name, v in m.items()})

    def gmacs(self, h: int, w: int, objects: int) -> dict[str, float] | None:
        key = (h, w, objects)
        if key not in self._cache:
            try:
                self._cache[key] = self._count(h, w, objects)
            except (MlvosError, ImportError, KeyError, ValueError) as e:
                self.error = f"{type(e).__name__}: {e}"
                self._cache[key] = None
        return self._cache[key]


def _per_stage(graph_gmacs: dict[str, float]) -> dict[str, float]:
    """{graph: GMACs} -> {stage: GMACs} over WORK_STAGES (0.0 where no graph runs) + "total"."""
    out = {s: graph_gmacs.get(STAGE_GRAPH.get(s, ""), 0.0) for s in WORK_STAGES}
    out["total"] = sum(out.values())
    return out


def model_stage_gmacs(
    variant: str, h: int, w: int, objects: int, capacity: int
) -> dict[str, float]:
    """GMACs per predictor stage of a model variant (mlvos.model.flops: needs torch).

    Args:
        variant: registry name of the model.
        h, w: padded frame size (multiples of the model's stride).
        objects: tracked objects (the memory encoder and read+decode each have a per-frame
            part and a per-object part: StageCost.memory_write_gmac, StageCost.read_gmac).
        capacity: memory slots of the bank.

    Returns:
        {stage: GMACs} for every stage of WORK_STAGES (0.0 for host-only stages) and "total".
    """
    from mlvos.model.flops import stage_costs

    c = stage_costs(variant, h, w, capacity)
    return _per_stage(
        {
            "query_encoder": c.query_gmac,
            "memory_encoder": c.memory_write_gmac(objects),
            "read_decoder": c.read_gmac(objects),
        }
    )


def tflops(gmacs: dict[str, float] | None, stats: dict[str, dict]) -> dict[str, float | None]:
    """Achieved TFLOP/s per stage: 2 * MACs / mean time."""
    if not gmacs:
        return {}
    out = {}
    for s, g in gmacs.items():
        ms = stats.get(s, {}).get("mean")
        out[s] = 2 * g * 1e9 / (ms * 1e-3) / 1e12 if ms and g else None
    return out
