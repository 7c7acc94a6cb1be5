"""VideoPredictor: the frame loop over any backend Runner, with a bounded memory bank (MemoryPolicy
chooses the slots). `propagate` runs it over a whole video."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlvos.errors import InputError
from mlvos.runtime.backends.base import Runner
from mlvos.runtime.locality import apply_locality, check_scale, slot_boxes
from mlvos.runtime.spec import (
    DEFAULT_MEM_EVERY,
    MAX_OBJECT_ID,
    MAX_SCALE,
    MIN_SCALE,
    MIN_SIDE,
    TIMED_STAGES,
    frame_to_input,
    internal_size,
    pad_array,
    padded_size,
    padding_for,
    resize_bilinear,
    resize_nearest,
    unpad_array,
)

# ----------------------------------------------------------------------------- memory policy
# Which memory slot a new frame goes to: STM's schedule over a fixed-capacity bank.
#
# Annotated frames are permanent; every `mem_every`-th frame is kept too (oldest evicted first);
# the previous frame occupies one temporary slot. Permanent frames never take more than
# capacity - 1 slots, so the bank (and the per-frame cost) stays bounded on unbounded videos.
# A periodic frame (a prediction) never displaces an annotation (ground truth): with every
# permanent slot annotated it is kept as the previous frame only. Only a new annotation can
# evict an annotation, and then as `annotations` says (ANNOTATION_POLICIES), never silently.
ANNOTATED, PERIODIC, TEMP = "annotated", "periodic", "temp"
KEEP_LATEST, REFUSE = "keep-latest", "refuse"
ANNOTATION_POLICIES = (KEEP_LATEST, REFUSE)
# Where the bank's capacity is set (named in the messages): the static T of exported graphs, the
# torch backend's slots.
CAPACITY_FLAGS = ("`mlvos export --capacity` (ONNX / TensorRT), `mlvos infer --capacity` or "
                  "open_runner(capacity=...) (PyTorch)")

logger = logging.getLogger(__name__)


@dataclass
class SlotEntry:
    frame: int
    kind: str


class MemoryPolicy:
    """Slot choice for a bank of `capacity` frames (see the comment above).

    Args:
        capacity: memory slots, >= 2 (an annotation and the previous frame); capacity - 1 of them
            hold permanent frames.
        annotations: what a new annotation does when the capacity - 1 permanent slots already
            hold annotations only (periodic frames are always evicted first):
            "keep-latest" (default): the first annotation and the latest ones are kept; the
            oldest annotation after the first is evicted, with a logged warning naming its
            frame and the capacity flags. With capacity 2 (one permanent slot) the new
            annotation replaces the previous one, the first included.
            "refuse": raise InputError naming the capacity flags instead of evicting.

    Raises:
        ValueError: capacity < 2. InputError: an unknown `annotations`.
    """

    def __init__(self, capacity: int, annotations: str = KEEP_LATEST):
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 (annotated + previous frame), got {capacity}")
        if annotations not in ANNOTATION_POLICIES:
            raise InputError(f"annotations must be one of {ANNOTATION_POLICIES}, got "
                             f"{annotations!r}")
        self.capacity = capacity
        self.annotations = annotations
        self.slots: dict[int, SlotEntry] = {}

    def reset(self) -> None:
        self.slots.clear()

    def frames(self) -> list[tuple[int, int, str]]:
        """(slot, frame index, kind) for every filled slot."""
        return sorted((s, e.frame, e.kind) for s, e in self.slots.items())

    def annotated_frames(self) -> list[int]:
        """Frame indices of the annotations in the bank, oldest first."""
        return sorted(e.frame for e in self.slots.values() if e.kind == ANNOTATED)

    def check_room(self, frame: int, pending: list[int]) -> None:
        """Under "refuse", raise InputError unless an annotation of `frame` fits beside the
        stored annotations and the `pending` ones (each will take a permanent slot): checked
        when a mask is given, before any frame has changed the bank."""
        if self.annotations != REFUSE:
            return
        kept = sorted(self.annotated_frames() + [f for f in pending if f != frame])
        if len(kept) + 1 > self.capacity - 1:
            raise InputError(self._refusal(frame, kept))

    def _refusal(self, frame: int, kept: list[int]) -> str:
        """The "refuse" message for an annotation of `frame` when frames `kept` (stored or
        pending) are annotated already."""
        return (f"the annotation of frame {frame} does not fit: a bank of capacity "
                f"{self.capacity} keeps at most {self.capacity - 1} annotations (one slot is the "
                f"previous frame's) and frames {kept} are annotated already; "
                f"annotations='refuse' evicts none. Raise the capacity to at least "
                f"{len(kept) + 2}: {CAPACITY_FLAGS}; or use annotations='keep-latest' (keeps "
                "the first and the latest annotations, warning for each evicted one)")

    def place(self, frame: int, kind: str) -> tuple[int, list[int]]:
        """Choose the slot for `frame`.

        Returns:
            (slot to write, slots whose contents become invalid).

        Raises:
            InputError: annotations="refuse" and an annotation would be evicted (the bank is
                left unchanged).
        """
        if kind not in (ANNOTATED, PERIODIC, TEMP):
            raise ValueError(f"unknown memory kind {kind!r}")
        temp = [s for s, e in self.slots.items() if e.kind == TEMP]
        if kind == TEMP:
            slot = temp[0] if temp else self._free()
            self.slots[slot] = SlotEntry(frame, kind)
            return slot, []
        # Decide before changing anything, so that a refusal leaves the bank as it was.
        evict = None
        permanent = [s for s, e in self.slots.items() if e.kind != TEMP]
        if len(permanent) >= self.capacity - 1:
            evict = self._oldest_periodic()
            if evict is None:
                if kind == PERIODIC:
                    kind = TEMP  # every permanent slot is annotated: keep it as the previous frame
                else:
                    evict = self._evicted_annotation(frame)
        # The previous frame's temporary copy is superseded by this newer frame.
        invalid: list[int] = []
        for s in temp:
            del self.slots[s]
            invalid.append(s)
        slot = evict if evict is not None else self._free()
        if slot in invalid:
            invalid.remove(slot)
        self.slots[slot] = SlotEntry(frame, kind)
        return slot, invalid

    def _free(self) -> int:
        for s in range(self.capacity):
            if s not in self.slots:
                return s
        raise RuntimeError("no free slot")  # unreachable: permanent frames use <= capacity - 1

    def _oldest_periodic(self) -> int | None:
        periodic = [(e.frame, s) for s, e in self.slots.items() if e.kind == PERIODIC]
        return min(periodic)[1] if periodic else None

    def _evicted_annotation(self, frame: int) -> int:
        """Slot of the annotation a new annotation of `frame` replaces (the oldest after the
        first; with one permanent slot, the only one), warning; raises under "refuse"."""
        annotated = sorted((e.frame, s) for s, e in self.slots.items() if e.kind == ANNOTATED)
        if self.annotations == REFUSE:
            raise InputError(self._refusal(frame, [f for f, _ in annotated]))
        victim, slot = annotated[1] if len(annotated) > 1 else annotated[0]
        logger.warning(
            f"memory bank full: the annotation of frame {victim} is evicted for the annotation "
            f"of frame {frame} (capacity {self.capacity} keeps {self.capacity - 1} annotations "
            "besides the previous frame; annotations='keep-latest' keeps the first and the "
            f"latest). To keep every annotation raise the capacity: {CAPACITY_FLAGS}; "
            "annotations='refuse' makes this an error")
        return slot


def propagate(
    runner: Runner, frames: Iterable[np.ndarray], first_mask: np.ndarray, **options: Any
) -> Iterator[np.ndarray]:
    """Segment a video from its first-frame mask: VideoPredictor(runner, **options) over
    `frames` ((H, W, 3) uint8 RGB, frame 0 annotated by `first_mask`, (H, W) uint8 ids).

    Yields:
        (H, W) uint8 label maps with the mask's ids, frame 0 included.
    """
    predictor = VideoPredictor(runner, **options)
    predictor.add_mask(0, first_mask)
    for frame in frames:
        yield predictor.step(frame)


def describe_schedule(mem_every: int, prev_every: int) -> str:
    """One line for run summaries, e.g. "memory: the annotated frames and one frame in 5 kept
    (--mem-every 5), no previous-frame slot (--prev-every 5)"."""
    if prev_every % mem_every == 0:
        prev = "no previous-frame slot"
    elif prev_every == 1:
        prev = "previous frame in a temporary slot"
    else:
        prev = f"temporary previous-frame slot refreshed every {prev_every} frames"
    return (f"memory: the annotated frames and one frame in {mem_every} kept (--mem-every "
            f"{mem_every}), {prev} (--prev-every {prev_every})")


class _Clock:
    """Per-stage wall time of one step (synchronizing the device between stages)."""

    def __init__(self, runner: Runner, sink: dict[str, list[float]] | None):
        self.runner, self.sink = runner, sink
        if sink is not None:
            self.start = self.last = time.perf_counter()
            self.acc = dict.fromkeys(TIMED_STAGES, 0.0)

    def lap(self, stage: str) -> None:
        if self.sink is not None:
            self.runner.synchronize()
            now = time.perf_counter()
            self.acc[stage] += (now - self.last) * 1e3
            self.last = now

    def finish(self) -> None:
        if self.sink is not None:
            self.acc["total"] = (time.perf_counter() - self.start) * 1e3
            for k, v in self.acc.items():
                self.sink[k].append(v)


class VideoPredictor:
    """Propagate object masks through a video, one frame at a time.

    Example:
        with open_runner("export_dir", backend="ort") as runner:
            predictor = VideoPredictor(runner)
            predictor.add_mask(0, first_mask)          # (H, W) uint8 ids, 0 = background
            for frame in frames:                        # (H, W, 3) uint8 RGB
                labels = predictor.step(frame)          # (H, W) uint8 ids

    Args:
        runner: an opened backend Runner (see runtime.backends.open_runner).
        mem_every: every `mem_every`-th frame is kept in memory; None (default): the model's
            (`runner.schedule`, from its config: 5 for every shipped variant, STM's).
        max_side: if set, frames whose longer side exceeds it are processed at a reduced internal
            size and the label map is resized back (nearest) to the input size.
        scale: internal size = frame size x `scale` (then capped by max_side), label maps
            resized back (nearest). Above 1 the stride-16 memory grid gets finer, which helps
            small objects and boundaries at a cost that grows faster than the pixel count (the
            memory read is quadratic in positions): README, Measured.
        max_objects: upper bound on simultaneous objects (engine limit); default: 255 ids.
        profile: record per-stage wall time in `timings` (milliseconds per frame). GPU backends
            synchronize between stages then, which costs a little throughput.
        locality: location prior against look-alikes (runtime.locality): each object's
            probabilities are weighted by a Gaussian of sigma `locality` x its previous box's
            longer side around that box; 0 (default) = off. Host-side, after read_decoder.
        prev_every: how often the previous frame's temporary slot is refreshed: every frame
            (1, STM's schedule) or every N-th frame (a multiple of mem_every: never, so no
            previous-frame slot at all). Frames neither annotated, periodic (mem_every) nor a
            refresh skip the memory encoder entirely: at N=2 it runs on about half the frames.
            None (default): the model's (`runner.schedule`; 1 for `paper`, 5 for `tiny`).
            README, Memory schedule, has the accuracy cost.
        annotations: when more annotated frames arrive than the bank keeps (runner.capacity -
            1; periodic frames are evicted first): "keep-latest" (default) keeps the first and
            the latest annotations and logs a warning for each one evicted; "refuse" makes the
            add_mask that would need an eviction raise InputError. See MemoryPolicy.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        mem_every: int | None = None,
        max_side: int | None = None,
        scale: float = 1.0,
        max_objects: int | None = None,
        profile: bool = False,
        locality: float = 0.0,
        annotations: str = KEEP_LATEST,
        prev_every: int | None = None,
    ):
        model_mem, model_prev = getattr(runner, "schedule", (DEFAULT_MEM_EVERY, 1))
        mem_every = model_mem if mem_every is None else mem_every
        prev_every = model_prev if prev_every is None else prev_every
        if isinstance(mem_every, bool) or not isinstance(mem_every, int) or mem_every < 1:
            raise InputError(f"mem_every must be an integer >= 1, got {mem_every!r}")
        if isinstance(prev_every, bool) or not isinstance(prev_every, int) or prev_every < 1:
            raise InputError(f"prev_every must be an integer >= 1, got {prev_every!r}")
        self.prev_every = prev_every
        if max_side is not None and max_side < MIN_SIDE:
            raise InputError(f"max_side must be >= {MIN_SIDE}, got {max_side}")
        if isinstance(scale, bool) or not (isinstance(scale, (int, float))
                                           and MIN_SCALE <= scale <= MAX_SCALE):
            raise InputError(f"scale must be a number in [{MIN_SCALE}, {MAX_SCALE}], got "
                             f"{scale!r}")
        self.runner = runner
        self.mem_every = mem_every
        self.max_side = max_side
        self.scale = float(scale)
        limit = min(getattr(runner, "max_objects", MAX_OBJECT_ID), MAX_OBJECT_ID)
        self.max_objects = min(max_objects or limit, limit)
        self.policy = MemoryPolicy(runner.capacity, annotations)
        self.profile = profile
        self.locality = check_scale(locality)
        self.timings: dict[str, list[float]] = {s: [] for s in TIMED_STAGES}
        # with profile: per step, whether the memory encoder ran (the schedule skips it on some
        # frames, so its per-frame cost is its run time x the share of frames that run it)
        self.memory_steps: list[bool] = []
        self.reset()

    # ------------------------------------------------------------------------------ public API
    @property
    def object_ids(self) -> list[int]:
        """Ids of the tracked objects, in bank order."""
        return list(self.ids)

    @property
    def frame_index(self) -> int:
        """Index of the next frame `step` will process."""
        return self.t

    def reset(self) -> None:
        """Forget all objects, memory and pending masks (e.g. before a new video)."""
        self.t = 0
        self.ids: list[int] = []
        self.pending: dict[int, tuple[np.ndarray, list[int]]] = {}
        self.size: tuple[int, int] | None = None
        self.inner: tuple[int, int] | None = None
        self.pad = None
        self.bank_objects = 0
        self.valid = np.zeros((0, self.runner.capacity), np.float32)
        self.prev_boxes: np.ndarray | None = None
        self.policy.reset()

    def add_mask(
        self, frame_index: int, mask: np.ndarray, object_ids: list[int] | None = None
    ) -> None:
        """Give ground truth for objects at `frame_index` (the current or a future frame).

        Args:
            frame_index: frame the mask belongs to; must be >= frame_index of the next `step`.
            mask: (H, W) uint8 label map, 0 = background, ids 1..255.
            object_ids: ids of `mask` to use (default: all non-zero ids present). New ids join
                the tracked objects; known ids are re-anchored: exactly their mask (their
                probability elsewhere is cleared). Other tracked objects keep their prediction
                outside the mask's objects.

        Raises:
            InputError: a frame already processed, a bad mask or ids, too many objects, or
                annotations="refuse" and this annotation would not fit in the memory bank.
        """
        if frame_index < self.t:
            raise InputError(
                f"add_mask for frame {frame_index}, but frames up to {self.t - 1} are already "
                f"processed; masks can be added for frame {self.t} or later"
            )
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise InputError(
                f"mask must be an (H, W) uint8 label map, got shape {mask.shape} "
                f"dtype {mask.dtype}; "
                "convert palette/grayscale PNGs with mlvos.palette.read_mask"
            )
        present = [int(i) for i in np.unique(mask) if i != 0]
        ids = present if object_ids is None else [int(i) for i in object_ids]
        missing = [i for i in ids if i not in present]
        if missing:
            raise InputError(
                f"object ids {missing} are not present in the mask (present: {present})"
            )
        if not ids:
            raise InputError("the mask holds no object (all pixels are 0)")
        new = [i for i in ids if i not in self.ids]
        if len(self.ids) + len(new) > self.max_objects:
            raise InputError(
                f"{len(self.ids) + len(new)} objects requested but this engine supports at most "
                f"{self.max_objects}; rebuild the engine with a larger --max-objects or track fewer"
            )
        self.policy.check_room(frame_index, list(self.pending))
        self.pending[frame_index] = (mask, ids)

    def remove_object(self, object_id: int) -> None:
        """Stop tracking `object_id`; its memory is dropped."""
        if object_id not in self.ids:
            raise InputError(f"object {object_id} is not tracked (tracked: {self.ids})")
        s = self.ids.index(object_id)
        last = len(self.ids) - 1
        if s != last:
            self.runner.move_object(last, s)
            self.valid[s] = self.valid[last]
            self.ids[s] = self.ids[last]
        self.valid[last] = 0
        self.ids.pop()
        self.runner.set_valid(self.valid)
        if not self.ids:
            self.policy.reset()

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Segment the next frame.

        Args:
            frame: (H, W, 3) uint8 RGB; every frame of a video has the same size.

        Returns:
            (H, W) uint8 label map with the tracked ids (0 = background).
        """
        clock = _Clock(self.runner, self.timings if self.profile else None)
        frame = self._check_frame(frame)
        t = self.t
        runner = self.runner
        x = self._prepare(frame)
        frame_dev = runner.upload(x)
        clock.lap("preprocess")
        ids_before = len(self.ids)
        probs = slots = query = None
        if ids_before and self.valid[:ids_before].any():
            query = runner.encode_query(frame_dev)
            clock.lap("query_encoder")
            probs, labels_dev = runner.read_decode(query, ids_before)
            clock.lap("read_decoder")
            if self.locality and self.prev_boxes is not None:
                # the prior re-takes the argmax: the graph's label map is not needed
                host, slots = apply_locality(runner.download(probs)[:ids_before],
                                             self.prev_boxes, self.locality)
                probs = runner.upload(host)
            else:
                slots = runner.download(labels_dev)
        kind = TEMP if t % self.mem_every else PERIODIC
        if t in self.pending:
            mask, ids = self.pending.pop(t)
            probs, slots = self._apply_mask(mask, ids, probs, slots)
            kind = ANNOTATED
        if self.locality:
            self.prev_boxes = None if slots is None else slot_boxes(slots, len(self.ids))
        clock.lap("postprocess")
        # a temporary frame between refreshes of the previous-frame slot is not memorized
        skip_memory = kind == TEMP and t % self.prev_every != 0
        if self.profile:
            self.memory_steps.append(bool(self.ids) and not skip_memory)
        if self.ids and not skip_memory:
            key, value = runner.encode_memory(frame_dev, probs, query)
            slot, invalid = self.policy.place(t, kind)
            n = len(self.ids)
            runner.write_slot(slot, key, value, n)
            before = self.valid.copy()  # (objects, capacity): a few bytes
            self.valid[:, invalid] = 0
            self.valid[:n, slot] = 1
            # Once the bank is full the table repeats frame after frame (the temporary slot
            # is rewritten in place); upload it only when it changes.
            if not np.array_equal(before, self.valid):
                runner.set_valid(self.valid)
            clock.lap("memory_encoder")
        self.t += 1
        out = self._to_ids(slots)
        clock.lap("postprocess")
        clock.finish()
        return out

    # ------------------------------------------------------------------------------ internals
    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(
                f"frame must be (H, W, 3) uint8 RGB, got shape {frame.shape} dtype {frame.dtype}"
            )
        h, w = frame.shape[:2]
        if self.size is None:
            if min(h, w) < MIN_SIDE:
                raise InputError(f"frame is {h}x{w}; both sides must be >= {MIN_SIDE}")
            self.size = (h, w)
            self.inner = internal_size(h, w, self.max_side, self.scale)
            if min(self.inner) < MIN_SIDE:
                raise InputError(f"frame {h}x{w} at scale {self.scale:g} is processed at "
                                 f"{self.inner[0]}x{self.inner[1]}; both sides must be >= "
                                 f"{MIN_SIDE}: raise scale or max_side")
            self.pad = padding_for(*self.inner, self.runner.stride)
            self.padded = padded_size(*self.inner, self.runner.stride)
        elif (h, w) != self.size:
            raise InputError(
                f"frame {self.t} is {h}x{w} but this video's frames are "
                f"{self.size[0]}x{self.size[1]}; "
                "all frames of a video must have the same size (call reset() for a new video)"
            )
        return frame

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        if self.inner != self.size:
            frame = resize_bilinear(frame, *self.inner)
        return frame_to_input(frame, self.pad)

    def _mask_to_inner(self, mask: np.ndarray) -> np.ndarray:
        if mask.shape != self.size:
            raise InputError(
                f"mask is {mask.shape[0]}x{mask.shape[1]} but the frame is "
                f"{self.size[0]}x{self.size[1]}; masks must have the frame's size"
            )
        return resize_nearest(mask, *self.inner) if self.inner != self.size else mask

    def _apply_mask(self, mask, ids, probs, slots):
        """Merge ground truth for `ids` with the predictions for the other tracked objects."""
        mask = pad_array(self._mask_to_inner(mask), self.pad)
        old = len(self.ids)
        for i in ids:
            if i not in self.ids:
                self.ids.append(i)
        n = len(self.ids)
        if n > self.bank_objects:
            self.bank_objects = max(n, 2 * self.bank_objects)
            self.runner.allocate_bank(self.bank_objects, *self.padded)
            grown = np.zeros((self.bank_objects, self.runner.capacity), np.float32)
            grown[: self.valid.shape[0]] = self.valid
            self.valid = grown
        host = np.zeros((n, *self.padded), np.float32)
        if probs is not None:
            host[:old] = self.runner.download(probs)[:old]
        given = np.isin(mask, ids)
        host[:, given] = 0.0
        # an annotated object is exactly its mask: a prediction that had spread elsewhere is cut
        for i in ids:
            host[self.ids.index(i)] = (mask == i).astype(np.float32)
        # Slot map: ground truth where given, else the previous prediction (or background).
        new_slots = np.zeros(self.padded, np.uint8) if slots is None else slots.copy()
        new_slots[given] = 0
        for i in ids:
            k = self.ids.index(i) + 1
            new_slots[(new_slots == k) & (mask != i)] = 0
            new_slots[mask == i] = k
        return self.runner.upload(host), new_slots

    def _to_ids(self, slots: np.ndarray | None) -> np.ndarray:
        h, w = self.size
        if slots is None:
            return np.zeros((h, w), np.uint8)
        lut = np.zeros(256, np.uint8)
        lut[1 : len(self.ids) + 1] = self.ids
        out = lut[unpad_array(slots, self.pad)]
        return resize_nearest(out, h, w) if self.inner != self.size else out
