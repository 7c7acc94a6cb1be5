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
    similarity: str = "dot",
) -> torch.Tensor:
    """STM's read: softmax over all T*h*w memory positions of the key affinity.

    Written as canonical attention, softmax(Q K^T + bias) V with the softmax on the last axis and
    the 1/sqrt(Ck) scale applied to Q before the first MatMul, so TensorRT can fuse it.

    Args:
        query_key: (O, Ck, h, w) float (one query key per object; expand a shared one).
        bank_key: (O, T, Ck, h, w) float, memory keys; empty slots must be finite (zeros).
        bank_value: (O, T, Cv, h, w) float.
        bank_valid: (O, T) float, 1.0 for filled slots, 0.0 for empty ones; at least one per
            object must be 1.
        similarity: "dot" (STM, q.k / sqrt(Ck)) or "l2" (STCN, (2 q.k - |k|^2) / sqrt(Ck), i.e.
            -|q - k|^2 / sqrt(Ck) without the query-only term that the softmax cancels). Both
            stay softmax(Q K^T + bias) V: L2 scales Q by 2 and adds -|k|^2 to the bias.

    Returns:
        (O, Cv, h, w) memory readout. Empty slots get exactly zero weight.
    """
    o, t, ck, h, w = bank_key.shape
    cv = bank_value.shape[2]
    scale = (2.0 if similarity == "l2" else 1.0) / math.sqrt(ck)
    q = (query_key * scale).flatten(2).transpose(1, 2)  # (O, hw, Ck)
    k = bank_key.permute(0, 1, 3, 4, 2).reshape(o, t * h * w, ck)  # (O, Thw, Ck)
    v = bank_value.permute(0, 1, 3, 4, 2).reshape(o, t * h * w, cv)  # (O, Thw, Cv)
    bias = ((1.0 - bank_valid) * INVALID_SLOT_BIAS).to(q.dtype)  # (O, T)
    bias = bias.unsqueeze(-1).expand(o, t, h * w).reshape(o, 1, t * h * w)
    if similarity == "l2":
        bias = bias - (k * k).sum(-1).unsqueeze(1) * (1.0 / math.sqrt(ck))
    attn = torch.softmax(torch.matmul(q, k.transpose(1, 2)) + bias, dim=-1)  # (O, hw, Thw)
    out = torch.matmul(attn, v)  # (O, hw, Cv)
    return out.transpose(1, 2).reshape(o, cv, h, w)
