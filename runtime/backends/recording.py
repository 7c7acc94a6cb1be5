"""RecordingRunner: the one Runner proxy. It forwards every call to the runner it wraps and can

- record each graph's inputs (host copies, by tensor name) while `recording` is True: the data
  of export's FP16 conversion and validation, and of INT8 calibration;
- time each call with a stage timer (`timer.mark()` / `timer.elapsed_ms(a, b)`), attributing it
  to a predictor stage: the device-time profile of mlvos.profiling.

The predictor's stages map to runner calls: preprocess = upload, query_encoder = encode_query,
read_decoder = read_decode (aggregation included), memory_encoder = encode_memory + write_slot +
set_valid, postprocess = download. Host-only work (padding, the id lookup) has no device time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlvos.runtime.spec import TIMED_STAGES, WORK_STAGES, Graph

CALL_STAGES = {
    "upload": "preprocess",
    "encode_query": "query_encoder",
    "read_decode": "read_decoder",
    "encode_memory": "memory_encoder",
    "write_slot": "memory_encoder",
    "set_valid": "memory_encoder",
    "download": "postprocess",
}
# runner call -> (graph it runs, the runner method that returns that graph's inputs)
GRAPH_CALLS = {
    "encode_query": (Graph.QUERY_ENCODER, "query_feed"),
    "encode_memory": (Graph.MEMORY_ENCODER, "memory_feed"),
    "read_decode": (Graph.READ_DECODER, "read_feed"),
}


class RecordingRunner:
    """Proxy of `runner` (any Runner): same calls, same results.

    Args:
        runner: the runner to wrap (recording needs its query_feed / memory_feed / read_feed).
        timer: optional stage timer; every call of CALL_STAGES is bracketed by two marks.

    Attributes:
        recording: while True, each graph call appends its inputs to `feeds[graph]`.
        feeds: {graph: [{tensor name: np.ndarray}]} in call order.
    """

    def __init__(self, runner: Any, *, timer: Any = None):
        self._runner = runner
        self._timer = timer
        self._spans: list[tuple[str, Any, Any]] = []
        self.recording = False
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {g: [] for g in Graph.ALL}

    def __enter__(self) -> RecordingRunner:
        self._runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._runner.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._runner, name)
        stage = CALL_STAGES.get(name)
        if stage is None or not callable(attr):
            return attr
        graph, feed = GRAPH_CALLS.get(name, (None, None))

        def call(*args, **kwargs):
            if self.recording and graph is not None:
                # before the call: read_decode's feed is the bank as the graph reads it
                self.feeds[graph].append(getattr(self._runner, feed)(*args, **kwargs))
            if self._timer is None:
                return attr(*args, **kwargs)
            start = self._timer.mark()
            out = attr(*args, **kwargs)
            self._spans.append((stage, start, self._timer.mark()))
            return out

        return call

    def collect(self) -> dict[str, float]:
        """Milliseconds per stage since the last collect; "total" = their sum (device busy)."""
        per = dict.fromkeys(TIMED_STAGES, 0.0)
        for stage, a, b in self._spans:
            per[stage] += self._timer.elapsed_ms(a, b)
        per["total"] = sum(per[s] for s in WORK_STAGES)
        self._spans.clear()
        return per
