"""Space-time memory read over a fixed-capacity bank with a validity mask."""

from __future__ import annotations

import math

import torch

from mlvos.runtime.spec import INVALID_SLOT_BIAS


def memory_read(
    query_key: torch.Tensor,
    bank_key: torch.Tensor,
    bank_value: torch.Tensor,
    bank_valid: torch.Tensor,
) -> torch.Tensor:
    """STM's read: softmax over all T*h*w memory positions of the dot-product affinity.

    Written as canonical attention, softmax(Q K^T + bias) V with the softmax on the last axis and
    the 1/sqrt(Ck) scale applied to Q before the first MatMul, so TensorRT can fuse it.

    Args:
        query_key: (O, Ck, h, w) float (one query key per object; expand a shared one).
        bank_key: (O, T, Ck, h, w) float, memory keys; empty slots must be finite (zeros).
        bank_value: (O, T, Cv, h, w) float.
        bank_valid: (O, T) float, 1.0 for filled slots, 0.0 for empty ones; at least one per
            object must be 1.

    Returns:
        (O, Cv, h, w) memory readout. Empty slots get exactly zero weight.
    """
    o, t, ck, h, w = bank_key.shape
    cv = bank_value.shape[2]
    q = (query_key * (1.0 / math.sqrt(ck))).flatten(2).transpose(1, 2)  # (O, hw, Ck)
    k = bank_key.permute(0, 1, 3, 4, 2).reshape(o, t * h * w, ck)  # (O, Thw, Ck)
    v = bank_value.permute(0, 1, 3, 4, 2).reshape(o, t * h * w, cv)  # (O, Thw, Cv)
    bias = ((1.0 - bank_valid) * INVALID_SLOT_BIAS).to(q.dtype)  # (O, T)
    bias = bias.unsqueeze(-1).expand(o, t, h * w).reshape(o, 1, t * h * w)
    attn = torch.softmax(torch.matmul(q, k.transpose(1, 2)) + bias, dim=-1)  # (O, hw, Thw)
    out = torch.matmul(attn, v)  # (O, hw, Cv)
    return out.transpose(1, 2).reshape(o, cv, h, w)
