"""Which memory slot a new frame goes to: STM's schedule over a fixed-capacity bank.

Annotated frames are permanent; every `mem_every`-th frame is kept too (oldest evicted first);
the previous frame occupies one temporary slot. Permanent frames never take more than
capacity - 1 slots, so the bank (and the per-frame cost) stays bounded on unbounded videos.
"""

from __future__ import annotations

from dataclasses import dataclass

ANNOTATED, PERIODIC, TEMP = "annotated", "periodic", "temp"


@dataclass
class SlotEntry:
    frame: int
    kind: str


class MemoryPolicy:
    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 (annotated + previous frame), got {capacity}")
        self.capacity = capacity
        self.slots: dict[int, SlotEntry] = {}

    def reset(self) -> None:
        self.slots.clear()

    def frames(self) -> list[tuple[int, int, str]]:
        """(slot, frame index, kind) for every filled slot."""
        return sorted((s, e.frame, e.kind) for s, e in self.slots.items())

    def place(self, frame: int, kind: str) -> tuple[int, list[int]]:
        """Choose the slot for `frame`.

        Returns:
            (slot to write, slots whose contents become invalid).
        """
        if kind not in (ANNOTATED, PERIODIC, TEMP):
            raise ValueError(f"unknown memory kind {kind!r}")
        invalid: list[int] = []
        temp = [s for s, e in self.slots.items() if e.kind == TEMP]
        if kind == TEMP:
            slot = temp[0] if temp else self._free()
        else:
            # The previous frame's temporary copy is superseded by this newer permanent frame.
            for s in temp:
                del self.slots[s]
                invalid.append(s)
            permanent = [s for s, e in self.slots.items() if e.kind != TEMP]
            if len(permanent) < self.capacity - 1:
                slot = self._free()
            else:
                slot = self._evictable()
                if slot is None:
                    # capacity 2 with only the first annotation stored: a periodic frame can
                    # only be the temporary "previous frame"; a new annotation replaces the old.
                    if kind == PERIODIC:
                        kind, slot = TEMP, self._free()
                    else:
                        slot = permanent[0]
            if slot in invalid:
                invalid.remove(slot)
        self.slots[slot] = SlotEntry(frame, kind)
        return slot, invalid

    def _free(self) -> int:
        for s in range(self.capacity):
            if s not in self.slots:
                return s
        raise RuntimeError("no free slot")  # unreachable: permanent frames use <= capacity - 1

    def _evictable(self) -> int | None:
        """Oldest periodic frame, else the oldest annotation after the first, else None."""
        periodic = [(e.frame, s) for s, e in self.slots.items() if e.kind == PERIODIC]
        if periodic:
            return min(periodic)[1]
        annotated = sorted((e.frame, s) for s, e in self.slots.items() if e.kind == ANNOTATED)
        return annotated[1][1] if len(annotated) > 1 else None
