"""Latency profiling and benchmarks of the runtime: `mlvos profile` (and `profile gpu-check`).

A package of its own, apart from mlvos.runtime, so that the deployable runtime core never pulls the
profiler's dependencies (the model, the synthetic-data generator, onnx, matplotlib).

What `mlvos profile` measures (see run_profile):
- per stage (runtime.spec.TIMED_STAGES) and end to end: mean, p50, p90, p99 and FPS after
  warm-up, for each resolution and object count, driving VideoPredictor with synthetic frames;
- read+decode latency against the number of valid memory slots (1..capacity);
- a long run: latency against the frame index (flatness of the bounded memory) and RSS growth;
- peak host RSS and peak device memory; GMACs per stage and achieved TFLOP/s.

Timing. The predictor's wall clock (it synchronizes the device between stages) is always
recorded. On a device with asynchronous execution a StageTimer also records device time: every
runner call is bracketed by two timer marks (runtime.backends.recording.RecordingRunner).
`timer_for` picks CUDA events for the torch backend on CUDA and the wall clock elsewhere; a
backend provides its own timer by defining `make_timer() -> StageTimer` on its Runner (e.g.
CUDA events recorded on the TensorRT stream).

Modules: probes (stage timers, host and device memory probes), measure
(statistics, synthetic videos, predictor runs, read+decode timing, GMACs), sweeps (ProfileConfig
and run_profile), report (report.json, CSV, text tables, compare), plots (PNG plots), onnx_macs
(MACs counted on the exported graphs), gpu_check (the time-boxed GPU check of paper and tiny:
its torch sections in gpu_torch, numerics vs the CPU in gpu_numerics, TensorRT in gpu_trt, CSV,
plots and table in gpu_report), compare (`mlvos check`: each precision's graphs or TensorRT
engines vs FP32 with Polygraphy's comparator), fusion (the attention fusion read from a TensorRT
engine's layers) and cli.
This module re-exports the public names of the first five (each module's __all__). numpy only at
import time; torch, onnx and matplotlib are imported where they are needed.
"""

from mlvos.profiling.measure import *  # noqa: F403
from mlvos.profiling.plots import *  # noqa: F403
from mlvos.profiling.probes import *  # noqa: F403
from mlvos.profiling.report import *  # noqa: F403
from mlvos.profiling.sweeps import *  # noqa: F403
