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

The code lives in mlvos.runtime.profiling (probes, measure, sweeps, report, plots); this module
re-exports the public names (each module's __all__), so `from mlvos.runtime.profiler import X`
keeps working. numpy only at import time; torch, onnx and matplotlib are imported where they are
needed.
"""

from mlvos.runtime.profiling.measure import *  # noqa: F403
from mlvos.runtime.profiling.plots import *  # noqa: F403
from mlvos.runtime.profiling.probes import *  # noqa: F403
from mlvos.runtime.profiling.report import *  # noqa: F403
from mlvos.runtime.profiling.sweeps import *  # noqa: F403
