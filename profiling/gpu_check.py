"""`mlvos profile gpu-check`: one self-contained, time-boxed GPU check of the `paper` and `tiny`
variants (random weights): the torch backend, and TensorRT where it is installed.

Needs torch (a CUDA build) and mlvos only; OpenCV (synthetic videos) and matplotlib (plots) are
used when present, TensorRT, onnx, onnxruntime and Polygraphy only by the TensorRT part. For each
variant (`--variant`, default `paper tiny`), sections in this order:

1. torch, per precision (FP16, FP32) and resolution (480p, 720p, 1080p): per-stage latency with
   CUDA events and end to end (VideoPredictor, stages synchronized), FPS, FPS without per-stage
   synchronization, peak device memory, GMACs and TFLOP/s (profiling.gpu_torch);
2. CUDA graphs off/on for the query encoder and read+decode at fixed shapes (gpu_torch);
3. label maps of a short synthetic video per precision, then FP16-vs-FP32 agreement and the
   numerics against the torch backend on the CPU in FP32 (gpu_numerics): per-object IoU of the
   propagated masks and of one-step reads (every frame read against a memory of the true first
   masks: with random weights, soft probabilities sit near ties and one flipped pixel grows when
   propagated), and the max abs error of obj_probs at one step;
4. TensorRT, only when `tensorrt` is importable and a CUDA device is usable (else recorded as
   "skipped: tensorrt not importable", not a failure; tensorrt is never imported otherwise):
   export (fp32 + fp16, unvalidated), FP16 engines with the default profile, VideoPredictor over
   TrtRunner at each resolution, and `mlvos check` (profiling.compare.run_check) of the FP16
   engines against the FP32 graphs on onnxruntime (profiling.gpu_trt). Variants in order of size.

Budget. Every section runs against one budget (`--budget-s`, default 420 s): the whole check,
torch's import and CUDA start-up included, fits in 8 minutes (480 s wall) on an H100, with the
rest for the interpreter's start before the clock and the CSV and plots after it. Each group of
torch sections has a share of the budget (SHARES), divided evenly among its sections; what a
section leaves unused goes to the next of its group. A section never gets more than what is left
of the whole budget, none starts with less than MIN_SECTION_S left, and one that cannot start is
recorded as "skipped: time budget spent". The torch shares are caps: what they leave is the
reserve for setup and overruns, and with TensorRT its part, which runs last and takes what is left
(less FINAL_S), split evenly among the variants still to run, smallest first; a variant's part
starts only with its estimated need left (gpu_trt.TRT_MIN_S: an export and three engine builds
cannot be interrupted). The default 420 s:

  group         without TensorRT         with TensorRT       sections
  setup         reserve, ~15 s expected  the same            torch import, CUDA start, models
  latency       0.40  168 s (14 s each)  0.22   92 s (8)     variants x precisions x resolutions
  cuda_graphs   0.12   50 s (4 s each)   0.06   25 s (2)     the same configs (CUDA only)
  labels        0.06   25 s (6 s each)   0.04   17 s (4)     variants x precisions
  numerics      0.20   84 s (42 s each)  0.10   42 s (21)    variants (the CPU FP32 reference)
  trt           -                        what is left,       variants, smallest first
                                         >= 244 s - setup
  reserve       0.22   92 s              -                   setup, loads, overruns
Expected on an H100 without TensorRT: about 15 s of setup, torch sections well inside their
shares (they stop at `iters` frames), the paper's CPU reference about 1 s a frame: 2-3 minutes in
all. With TensorRT, tiny's part is estimated at under a minute; paper's (240 s estimated) starts
only if that much is left after it, else a larger --budget-s or `--variant paper` alone measures
it. Both estimates are guesses until a GPU with TensorRT has run them.

Failures are recorded in the report instead of raised, and the report is rewritten after each
section, so an interrupted check still leaves its partial results. `--smoke` runs the same code on
the CPU at 64x96 (the numerics "device" side is then the CPU itself: the code path is exercised).

The prepared device command (`run` of the device tool, timeout_s 600, nothing in `carry`: the
working tree travels, and .venv must not, its torch being this machine's CPU build). The bare
lent H100 has a CUDA torch, onnx and onnxruntime (CPU) in its python3, no TensorRT, no network:
mlvos is built offline from the tree (setuptools of the image, no dependencies), then run through
make with no .venv (`STAMP=`) and that python's scripts folder as BIN (plain `mlvos` without
make). About 3 minutes; at most 480 s for the check itself:

  set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
  BIN=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  export PYTHONUNBUFFERED=1
  if command -v make >/dev/null; then make gpu-check OUT=$OUT/gpu STAMP= BIN=$BIN
  else $BIN/mlvos profile gpu-check --out $OUT/gpu; fi 2>&1 | tee $OUT/gpu-check.log

It brings back $OUT/gpu/{gpu_check.json, gpu_check.csv, gpu_latency.png, gpu_cuda_graphs.png}
and $OUT/gpu-check.log (5 files, well under the tool's limits); the final table ends the log.
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

from mlvos.errors import InputError, MlvosError, require
from mlvos.profiling.gpu_report import section_ok, write_csv, write_plots
from mlvos.profiling.measure import SyntheticVideo, synthetic_video
from mlvos.runtime.spec import DEFAULT_CAPACITY, parse_resolution

GPU_FORMAT = "mlvos-gpu-check"
GPU_VERSION = 2
REPORT_FILE = "gpu_check.json"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    variants: tuple[str, ...]
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
    trt: bool = True
    capacity: int = DEFAULT_CAPACITY
    seed: int = 0


FULL = dict(
    variants=("paper", "tiny"),
    device="cuda",
    resolutions=("480p", "720p", "1080p"),
    precisions=("fp16", "fp32"),
    objects=1,
    warmup=5,
    iters=30,
    budget_s=420.0,
    unique_frames=6,
    agreement_frames=12,
    graph_iters=30,
)
SMOKE = dict(
    variants=("tiny",),
    device="cpu",
    resolutions=("64x96",),
    precisions=("fp32",),
    objects=1,
    warmup=1,
    iters=3,
    budget_s=50.0,
    unique_frames=3,
    agreement_frames=3,
    graph_iters=3,
)
# Shares of the budget per group of torch sections (module docstring): caps, so that the rest
# is left for setup and overruns, and with TensorRT for its part, which takes whatever is left.
SHARES = {"latency": 0.40, "cuda_graphs": 0.12, "labels": 0.06, "numerics": 0.20}
SHARES_WITH_TRT = {"latency": 0.22, "cuda_graphs": 0.06, "labels": 0.04, "numerics": 0.10}
MIN_SECTION_S = 3.0
# min_s of the sections that run whatever the clock says: setup, and those that only write up
# what was measured (agreement, CSV, plots).
ALWAYS = float("-inf")


class _Budget:
    """Seconds per group of sections: the group's share, divided among its sections not yet run
    (what a section leaves unused goes to the next of its group)."""

    def __init__(self, total: float, shares: dict[str, float], sections: dict[str, int]):
        self.allotted = {g: shares.get(g, 0.0) * total for g in sections}
        self.spent = dict.fromkeys(sections, 0.0)
        self.remaining = dict(sections)

    def take(self, group: str) -> float:
        """The next section's seconds of `group` (counts it as started)."""
        n = max(1, self.remaining[group])
        self.remaining[group] = max(0, self.remaining[group] - 1)
        return max(0.0, self.allotted[group] - self.spent[group]) / n

    def charge(self, group: str, seconds: float) -> None:
        self.spent[group] += seconds


class _Check:
    """The report under construction, the clock, the budget and the section runner."""

    def __init__(self, out: Path, settings: Settings, budget: _Budget):
        self.out, self.settings, self.budget = out, settings, budget
        self.start = time.perf_counter()
        self.torch: Any = None
        self.report: dict[str, Any] = {
            "format": GPU_FORMAT,
            "version": GPU_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": settings.__dict__,
            "budget_s": dict(budget.allotted),
            "status": "running",
            "sections": {},
            "variants": {
                v: {
                    "configs": [],
                    "cuda_graphs": [],
                    "agreement": None,
                    "numerics": None,
                    "trt": None,
                }
                for v in settings.variants
            },
            "trt": None,
            "errors": [],
        }

    def left(self) -> float:
        return self.settings.budget_s - (time.perf_counter() - self.start)

    def write(self) -> None:
        from mlvos.fileio import atomic_write_text

        self.report["elapsed_s"] = time.perf_counter() - self.start
        atomic_write_text(self.out / REPORT_FILE, json.dumps(self.report, indent=1))

    def skip(self, name: str, reason: str, *, benign: bool) -> None:
        """Record a section that does not run; benign: for an absent option, not for time."""
        self.report["sections"][name] = {"status": f"skipped: {reason}", "benign": benign}
        if not benign:
            logger.warning(f"[{self._t()}] {name}: skipped ({reason})")
        self.write()

    def section(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        min_s: float = MIN_SECTION_S,
        deadline: float | None = None,
        group: str | None = None,
    ) -> Any:
        """Run fn() unless less than min_s is left (of the budget, or before `deadline`);
        record status, time and any error; charge the time to `group`."""
        left = self.left()
        if deadline is not None:
            left = min(left, deadline - time.perf_counter())
        if left < min_s:
            self.skip(name, "time budget spent", benign=False)
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
            self.free()
        seconds = time.perf_counter() - t0
        if group is not None:
            self.budget.charge(group, seconds)
        self.report["sections"][name] = {"status": status, "seconds": seconds}
        self.write()
        return result

    def free(self) -> None:
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
            base[k] = tuple(dict.fromkeys(v)) if isinstance(v, (list, tuple)) else v
    return Settings(**base)


def _setup(chk: _Check, cudnn_benchmark: bool) -> None:
    """Import torch, check the device, record versions."""
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
        torch.zeros(1, device=dev)  # start CUDA here, not inside the first timed section
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
    logger.info(f"[{chk._t()}] setup: {info.get('gpu', s.device)}, torch {torch.__version__}")


def _build(chk: _Check, variant: str) -> Any:
    """The variant with random weights (seeded), FP32 on the CPU, in eval mode: the master copy
    that every runner copies and the CPU reference runs as is."""
    from mlvos.model.registry import build_model

    model = build_model(variant, seed=chk.settings.seed).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    chk.report["variants"][variant]["params_m"] = params
    logger.info(f"[{chk._t()}] {variant}: {params:.1f} M parameters, random weights")
    return model


def _run_variant(chk: _Check, variant: str, model: Any, videos: Callable) -> None:
    """Every torch section of one variant: the precision passes, then the numerics."""
    from mlvos.profiling.gpu_numerics import agreement_report, cpu_numerics
    from mlvos.profiling.gpu_torch import precision_pass

    s = chk.settings
    labels: dict[str, dict] = {}
    for precision in s.precisions:
        precision_pass(chk, variant, model, precision, videos, labels)
    def video() -> SyntheticVideo:  # the label video (cached)
        return videos(s.resolutions[0], max(2, s.objects))

    chk.section(
        f"{variant}: fp16-vs-fp32 agreement",
        lambda: agreement_report(chk, variant, labels, video()),
        min_s=ALWAYS,
    )
    budget = chk.budget.take("numerics")
    chk.section(
        f"{variant}: numerics vs cpu fp32",
        lambda: cpu_numerics(chk, variant, model, labels, video(), min(budget, chk.left())),
        group="numerics",
    )


def _status(report: dict[str, Any]) -> str:
    sections = report["sections"]
    if "ok" != (sections.get("setup") or {}).get("status"):
        return "failed"
    return "ok" if all(section_ok(v) for v in sections.values()) else "partial"


def run_gpu_check(
    *,
    out: str | os.PathLike,
    smoke: bool = False,
    variants: tuple[str, ...] | None = None,
    device: str | None = None,
    resolutions: tuple[str, ...] | None = None,
    precisions: tuple[str, ...] | None = None,
    objects: int = 1,
    iters: int | None = None,
    budget_s: float | None = None,
    cudnn_benchmark: bool = False,
    trt: bool = True,
) -> dict[str, Any]:
    """Run the check and write gpu_check.json, gpu_check.csv and PNG plots into `out`.

    Args:
        out: report folder (created).
        smoke: CPU defaults (tiny, 64x96, FP32, a few frames, 50 s budget, no TensorRT).
        variants, device, resolutions, precisions, iters, budget_s: override the defaults
            (paper + tiny, cuda, 480p/720p/1080p, fp16+fp32, 30 frames, 420 s).
        objects: tracked objects in the latency runs (the label videos use >= 2).
        cudnn_benchmark: let cuDNN autotune convolutions (slower first frames).
        trt: run the TensorRT part where TensorRT and a CUDA device are usable.

    Progress goes to the loggers mlvos.profiling.gpu_* (failed or skipped sections as warnings);
    `mlvos profile gpu-check` prints gpu_report.final_table(report) at the end.

    Returns:
        The report; report["status"] is "ok", "partial" (some section failed or was skipped
        for time) or "failed" (setup failed). Never raises for a failed measurement.

    Raises:
        InputError: an unknown variant or resolution.
    """
    settings = _settings(
        smoke,
        variants=variants,
        device=device,
        resolutions=resolutions,
        precisions=precisions,
        iters=iters,
        budget_s=budget_s,
        objects=objects,
        trt=trt,
    )
    from mlvos.model.registry import variants as registered

    unknown = [v for v in settings.variants if v not in registered()]
    if unknown or not settings.variants:
        raise InputError(
            f"unknown variant(s) {unknown or '(none given)'}; choose from "
            f"{', '.join(registered())}"
        )
    for res in settings.resolutions:
        parse_resolution(res)  # InputError now, not in every section
    cuda = settings.device.startswith("cuda")
    dropped = not cuda and "fp16" in settings.precisions
    if dropped:
        # TorchRunner refuses fp16 on the CPU (it would be emulated, not measured).
        kept = tuple(p for p in settings.precisions if p != "fp16") or ("fp32",)
        settings = dataclasses.replace(settings, precisions=kept)
    from mlvos.profiling.gpu_trt import run_trt, trt_status

    trt_ok, trt_why = trt_status(settings) if settings.trt else (False, "not requested (--no-trt)")
    n_v, n_p = len(settings.variants), len(settings.precisions)
    n_configs = n_v * n_p * len(settings.resolutions)
    sections = {
        "latency": n_configs,
        "cuda_graphs": n_configs if cuda else 0,
        "labels": n_v * n_p,
        "numerics": n_v,
    }
    budget = _Budget(settings.budget_s, SHARES_WITH_TRT if trt_ok else SHARES, sections)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chk = _Check(out, settings, budget)
    chk.report["smoke"] = smoke
    chk.report["trt"] = {"available": trt_ok, "reason": trt_why}
    if dropped:
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
        chk.section("setup", lambda: _setup(chk, cudnn_benchmark), min_s=ALWAYS)
        models: dict[str, Any] = {}
        if chk.report["sections"]["setup"]["status"] == "ok":
            with chk.torch.no_grad():
                for variant in settings.variants:
                    model = chk.section(f"{variant}: build", lambda v=variant: _build(chk, v))
                    if model is not None:
                        models[variant] = model
                        _run_variant(chk, variant, model, videos)
                        chk.free()
        for variant in settings.variants:
            if not trt_ok:
                chk.skip(f"{variant}: trt", trt_why, benign=True)
        if trt_ok and models:
            # Smallest first: within the budget, the cheap engines are surely built.
            order = sorted(models, key=lambda v: chk.report["variants"][v]["params_m"])
            for i, variant in enumerate(order):
                run_trt(chk, variant, models[variant], videos, Path(tmp), len(order) - i)
    if video_cache:
        chk.report["videos"] = next(iter(video_cache.values())).source
    chk.section("csv", lambda: write_csv(chk), min_s=ALWAYS)
    chk.section("plots", lambda: write_plots(chk), min_s=ALWAYS)
    chk.report["status"] = _status(chk.report)
    chk.write()
    return chk.report
