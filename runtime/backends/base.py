"""The backend contract: open_runner (backends/__init__.py) builds a Runner; the Runner executes
the three graphs and owns the memory bank on its device. Arrays it returns are backend-native
("device") objects that the predictor only passes back; per frame only the input frame goes up
and only the label map comes back. Annotated frames (rare) may move probabilities to the host
and back.
"""

from __future__ import annotations

import functools
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from mlvos.errors import InputError
from mlvos.runtime.spec import DEFAULT_MEM_EVERY

log = logging.getLogger(__name__)

# NVTX ranges around the graph calls, for Nsight Systems: unset = on for CUDA devices when an NVTX
# provider imports; "1" = on for any device (the CPU included: tests, CPU timelines); "0" = off.
NVTX_ENV = "MLVOS_NVTX"


class NvtxRanges(NamedTuple):
    """An NVTX provider's push(message) and pop() (ranges nest per thread)."""

    push: Callable[[str], Any]
    pop: Callable[[], Any]


def nvtx_ranges(*, cuda: bool, fallback: Callable[[], NvtxRanges] | None = None):
    """The NVTX provider a runner marks its graph calls with (see nvtx_stage), or None for none.

    Providers, imported here (when a runner is made), never at import time: the `nvtx` package
    (`pip install nvtx`), else `fallback()` on CUDA (the torch backend's torch.cuda.nvtx).

    Args:
        cuda: the runner's device is a CUDA device.
        fallback: returns the backend's own provider; called only when `cuda` is true.

    Raises:
        InputError: MLVOS_NVTX is set to something other than 0 or 1.
    """
    flag = os.environ.get(NVTX_ENV, "").strip()
    if flag not in ("", "0", "1"):
        raise InputError(
            f"{NVTX_ENV}={flag!r}: set it to 1 (NVTX ranges on any device), 0 (off) or unset it "
            "(on for CUDA devices when the nvtx package is installed)"
        )
    if flag == "0" or (not flag and not cuda):
        return None
    try:
        import nvtx
    except ImportError:
        nvtx = None
    if nvtx is not None:
        return NvtxRanges(nvtx.push_range, nvtx.pop_range)
    if cuda and fallback is not None:
        return fallback()
    if flag == "1":
        log.warning("%s=1 but no NVTX provider imports: pip install nvtx", NVTX_ENV)
    return None


def nvtx_stage(graph: str):
    """Decorate a runner's graph method: while the runner's `nvtx` (nvtx_ranges()) is set, each
    call runs inside an NVTX range named `graph` (runtime.spec.Graph: query_encoder, ...).

    The range covers the host side of the stage (binding, launch, and the wait where the backend
    waits); Nsight Systems projects it onto the GPU work launched inside it.
    """

    def wrap(method):
        @functools.wraps(method)
        def ranged(self, *args, **kwargs):
            ranges = getattr(self, "nvtx", None)
            if ranges is None:
                return method(self, *args, **kwargs)
            ranges.push(graph)
            try:
                return method(self, *args, **kwargs)
            finally:
                ranges.pop()

        return ranged

    return wrap


class Runner(ABC):
    """Executes query_encoder / memory_encoder / read_decoder and manages the bank.

    Lifecycle: `with runner:` (or open()/close()) allocates and frees device resources.
    The bank holds `max_objects` x `capacity` slots; reads use its first `objects` objects.
    """

    name: str = "base"
    stride: int
    capacity: int
    nvtx: NvtxRanges | None = None  # set by runners on CUDA devices (see nvtx_ranges)

    def __enter__(self) -> Runner:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:  # noqa: B027 - optional hook
        pass

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @property
    def schedule(self) -> tuple[int, int]:
        """(mem_every, prev_every) the model was validated with: VideoPredictor's default.
        From the export's manifest; STM's (DEFAULT_MEM_EVERY, 1) for a runner without one."""
        manifest = getattr(self, "manifest", None)
        return manifest.schedule if manifest is not None else (DEFAULT_MEM_EVERY, 1)

    def synchronize(self) -> None:  # noqa: B027 - CPU backends are synchronous
        """Wait for queued device work (for timing)."""

    # transfers
    @abstractmethod
    def upload(self, array: np.ndarray) -> Any:
        """Host array -> device array (same dtype)."""

    @abstractmethod
    def download(self, value: Any) -> np.ndarray:
        """Device array -> host numpy array."""

    # graphs
    @abstractmethod
    def encode_query(self, frame: Any) -> Any:
        """frame (1, 3, H, W) uint8 on device -> opaque query features on device."""

    @abstractmethod
    def encode_memory(self, frame: Any, probs: Any, query: Any = None) -> tuple[Any, Any]:
        """frame (1, 3, H, W) uint8, probs (O, H, W) float32 -> (mem_key, mem_value) on device.

        query: what encode_query returned for this frame, if it ran. A shared-key model's
        memory_encoder takes the frame's query key (manifest input `query_key`); without
        `query` the runner encodes the frame as a query first.
        """

    @abstractmethod
    def read_decode(self, query: Any, objects: int) -> tuple[Any, Any]:
        """Read the bank's first `objects` objects -> (obj_probs (O, H, W), labels (H, W) uint8),
        both on device (labels hold slot indices: 0 = background, k = object slot k-1)."""

    # memory bank
    @abstractmethod
    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        """(Re)allocate a zero-filled bank for `max_objects` at padded size (height, width),
        keeping the contents of objects already stored."""

    @abstractmethod
    def write_slot(self, slot: int, key: Any, value: Any, objects: int) -> None:
        """bank[:objects, slot] = (key, value), in place."""

    @abstractmethod
    def set_valid(self, valid: np.ndarray) -> None:
        """Copy the (max_objects, capacity) float32 validity table to the device."""

    @abstractmethod
    def move_object(self, src: int, dst: int) -> None:
        """bank[dst] = bank[src] (compaction after an object is removed)."""

    # graph inputs, for recording calibration and validation data (optional)
    def query_feed(self, frame: Any) -> dict[str, np.ndarray]:
        """Host copies of what query_encoder receives for encode_query(frame), by tensor name."""
        raise NotImplementedError(f"the {self.name} backend does not record graph inputs")

    def memory_feed(self, frame: Any, probs: Any, query: Any = None) -> dict[str, np.ndarray]:
        """Host copies of memory_encoder's inputs for encode_memory(frame, probs, query)."""
        raise NotImplementedError(f"the {self.name} backend does not record graph inputs")

    def read_feed(self, query: Any, objects: int) -> dict[str, np.ndarray]:
        """Host copies of read_decoder's inputs for read_decode(query, objects), the bank's
        first `objects` objects at full capacity included."""
        raise NotImplementedError(f"the {self.name} backend does not record graph inputs")
