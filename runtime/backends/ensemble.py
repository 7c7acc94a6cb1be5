"""EnsembleRunner: several runners as one (the paper's ensemble of pre-trained, main-trained and
fine-tuned models). Every member keeps its own memory bank; each read averages the members'
soft-aggregated object probabilities, and that average is what every member writes to memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlvos.errors import InputError
from mlvos.runtime.backends.base import Runner
from mlvos.runtime.spec import DEFAULT_MEM_EVERY


class EnsembleRunner(Runner):
    """Runner over `members` (opened and closed with it). They must share stride and capacity.

    Device values are tuples with one entry per member; the averaged probabilities are host
    arrays (uploaded to each member where needed): the ensemble costs one probability download
    per member and frame.
    """

    name = "ensemble"

    def __init__(self, members: Sequence[Any]):
        if len(members) < 1:
            raise InputError("an ensemble needs at least one runner")
        strides = {m.stride for m in members}
        capacities = {m.capacity for m in members}
        if len(strides) > 1 or len(capacities) > 1:
            raise InputError(
                f"ensemble members must share stride and capacity, got strides {sorted(strides)} "
                f"and capacities {sorted(capacities)}; build them with the same capacity and "
                "use models of one backbone stride"
            )
        self.members = list(members)
        schedules = {tuple(m.schedule) for m in members}
        # members validated with different schedules: STM's, the schedule no member prefers
        self._schedule = schedules.pop() if len(schedules) == 1 else (DEFAULT_MEM_EVERY, 1)
        self.stride = strides.pop()
        self.capacity = capacities.pop()
        limits = [m.max_objects for m in members if hasattr(m, "max_objects")]
        if limits:
            self.max_objects = min(limits)

    @property
    def schedule(self) -> tuple[int, int]:
        """The members' (mem_every, prev_every) where they agree, else STM's."""
        return self._schedule

    def __enter__(self) -> EnsembleRunner:
        for m in self.members:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self.members):
            m.__exit__(*exc)

    def synchronize(self) -> None:
        for m in self.members:
            m.synchronize()

    def _each(self, value: Any) -> list[Any]:
        """Per-member device values of `value`: a tuple from this runner, or a host array."""
        if isinstance(value, tuple):
            return list(value)
        return [m.upload(np.asarray(value)) for m in self.members]

    def upload(self, array: np.ndarray) -> tuple:
        return tuple(m.upload(array) for m in self.members)

    def download(self, value: Any) -> np.ndarray:
        return self.members[0].download(value[0]) if isinstance(value, tuple) else value

    def encode_query(self, frame: Any) -> tuple:
        return tuple(m.encode_query(f) for m, f in zip(self.members, self._each(frame)))

    def encode_memory(self, frame: Any, probs: Any, query: Any = None) -> tuple[tuple, tuple]:
        queries = query if query is not None else (None,) * len(self.members)
        kv = [
            m.encode_memory(f, p, q)
            for m, f, p, q in zip(self.members, self._each(frame), self._each(probs), queries)
        ]
        return tuple(k for k, _ in kv), tuple(v for _, v in kv)

    def read_decode(self, query: Any, objects: int) -> tuple[np.ndarray, np.ndarray]:
        probs = np.mean(
            [m.download(m.read_decode(q, objects)[0]).astype(np.float32)
             for m, q in zip(self.members, query)],
            axis=0,
        )
        background = 1.0 - probs.sum(0, keepdims=True)
        labels = np.concatenate([background, probs]).argmax(0).astype(np.uint8)
        return probs, labels

    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        for m in self.members:
            m.allocate_bank(max_objects, height, width)

    def write_slot(self, slot: int, key: Any, value: Any, objects: int) -> None:
        for m, k, v in zip(self.members, key, value):
            m.write_slot(slot, k, v, objects)

    def set_valid(self, valid: np.ndarray) -> None:
        for m in self.members:
            m.set_valid(valid)

    def move_object(self, src: int, dst: int) -> None:
        for m in self.members:
            m.move_object(src, dst)
