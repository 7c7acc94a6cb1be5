"""PyTorch reference propagation (STM's schedule over a bounded memory), with ensembles.

This is the accuracy reference that exported graphs and the runtime are compared against; the
deployable frame loop is mlvos.runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from mlvos.errors import InputError
from mlvos.model.decoder import soft_aggregate_logits
from mlvos.model.network import STMNet
from mlvos.runtime.memory import ANNOTATED, PERIODIC, TEMP, MemoryPolicy
from mlvos.runtime.spec import DEFAULT_CAPACITY, DEFAULT_MEM_EVERY, padding_for


def object_ids(mask: np.ndarray) -> list[int]:
    """Sorted non-zero ids present in an (H, W) uint8 label map."""
    return [int(i) for i in np.unique(mask) if i != 0]


class _Bank:
    """Fixed-capacity memory of one model, filled by the runtime's MemoryPolicy so that the
    reference and the deployed runtime keep exactly the same frames."""

    def __init__(self, capacity: int):
        self.policy = MemoryPolicy(capacity)
        self.capacity = capacity
        self.key = self.value = self.valid = None

    def add(self, kv: tuple[torch.Tensor, torch.Tensor], frame: int, kind: str) -> None:
        key, value = kv
        if self.key is None:
            o = key.shape[0]
            self.key = key.new_zeros(o, self.capacity, *key.shape[1:])
            self.value = value.new_zeros(o, self.capacity, *value.shape[1:])
            self.valid = key.new_zeros(o, self.capacity)
        slot, invalid = self.policy.place(frame, kind)
        self.key[:, slot], self.value[:, slot] = key, value
        self.valid[:, invalid] = 0
        self.valid[:, slot] = 1

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.key, self.value, self.valid


@torch.no_grad()
def propagate(
    models: Sequence[STMNet],
    frames: Iterable[np.ndarray],
    first_mask: np.ndarray,
    *,
    capacity: int = DEFAULT_CAPACITY,
    mem_every: int = DEFAULT_MEM_EVERY,
    device: str = "cpu",
) -> Iterator[np.ndarray]:
    """Segment a video from its first-frame mask.

    Args:
        models: one model, or several for the paper's ensemble (per-object probabilities are
            averaged before aggregation).
        frames: iterable of (H, W, 3) uint8 RGB frames, all the same size; frame 0 is annotated.
        first_mask: (H, W) uint8 label map of frame 0 (0 = background, ids 1..255).
        capacity: memory slots (>= 2): frame 0, every `mem_every`-th frame, and the previous one.
        mem_every: period of permanent memory frames.

    Yields:
        (H, W) uint8 label maps with the original ids, frame 0 included (its ground truth).
    """
    if capacity < 2:
        raise InputError(f"capacity must be >= 2 (annotated + previous frame), got {capacity}")
    if mem_every < 1:
        raise InputError(f"mem_every must be >= 1, got {mem_every}")
    first_mask = np.asarray(first_mask)
    if first_mask.ndim != 2 or first_mask.dtype != np.uint8:
        raise InputError(
            "first_mask must be an (H, W) uint8 label map, "
            f"got {first_mask.shape} {first_mask.dtype}"
        )
    ids = object_ids(first_mask)
    if not ids:
        raise InputError("the first-frame mask has no object (all pixels are 0)")
    lut = np.array([0] + ids, dtype=np.uint8)
    stride = max(m.stride for m in models)
    banks = [_Bank(capacity) for _ in models]
    pad = None
    size = None

    def to_tensor(frame: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].to(device)
        return torch.nn.functional.pad(x, pad.as_torch)

    for t, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(
                f"frame {t} must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}"
            )
        if size is None:
            size = frame.shape[:2]
            if first_mask.shape != size:
                raise InputError(
                    f"first-frame mask is {first_mask.shape} but frame 0 is {size}; they must match"
                )
            pad = padding_for(size[0], size[1], stride)
        elif frame.shape[:2] != size:
            raise InputError(
                f"frame {t} is {frame.shape[:2]} but frame 0 is {size}; sizes must match"
            )
        x = to_tensor(frame)
        if t == 0:
            m = torch.from_numpy(first_mask).to(device)
            probs = torch.stack([(m == i).float() for i in ids])
            probs = torch.nn.functional.pad(probs, pad.as_torch)
            for model, bank in zip(models, banks):
                bank.add(model.encode_memory(x, probs), 0, ANNOTATED)
            yield first_mask.copy()
            continue
        queries = [m.encode_query(x) for m in models]
        logits = [m.read_decode(q, *b.tensors()) for m, q, b in zip(models, queries, banks)]
        if len(logits) > 1:
            # Ensemble: average per-object probabilities, then aggregate.
            fg = torch.stack([torch.sigmoid(lg) for lg in logits]).mean(0).clamp(1e-7, 1 - 1e-7)
            logits = [torch.logit(fg)]
        agg = torch.softmax(soft_aggregate_logits(logits[0]), dim=0)  # (O+1, H, W)
        for model, q, bank in zip(models, queries, banks):
            kind = TEMP if t % mem_every else PERIODIC
            bank.add(model.encode_memory(x, agg[1:], q.key), t, kind)
        h, w = agg.shape[-2:]
        labels = agg[:, pad.top : h - pad.bottom, pad.left : w - pad.right].argmax(0)
        yield lut[labels.cpu().numpy()]
