"""The backend contract: open_runner (backends/__init__.py) builds a Runner; the Runner executes
the three graphs and owns the memory bank on its device. Arrays it returns are backend-native
("device") objects that the predictor only passes back; per frame only the input frame goes up
and only the label map comes back. Annotated frames (rare) may move probabilities to the host
and back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Runner(ABC):
    """Executes query_encoder / memory_encoder / read_decoder and manages the bank.

    Lifecycle: `with runner:` (or open()/close()) allocates and frees device resources.
    The bank holds `max_objects` x `capacity` slots; reads use its first `objects` objects.
    """

    name: str = "base"
    stride: int
    capacity: int

    def __enter__(self) -> Runner:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:  # noqa: B027 - optional hook
        pass

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

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
