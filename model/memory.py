"""Space-time memory read over a fixed-capacity bank with a validity mask, and two optional
priors against look-alike objects (top-k, KMN kernel) written as additive logit terms."""

from __future__ import annotations

import math

import torch

from mlvos.runtime.spec import INVALID_SLOT_BIAS

# Floor of each axis's term of the log-kernel (so the whole term is >= 2 * KERNEL_LOG_FLOOR).
# exp(-500) is 0 in float32, so the floor changes nothing unless every memory position is that
# far from a query position; it keeps the logits finite in FP16 graphs (a squared distance in
# cells divided by 2 sigma^2 overflows there for a small sigma at large frames) and leaves the
# empty-slot bias (-1e4) ahead of any valid position.
KERNEL_LOG_FLOOR = -500.0


def memory_read(
    query_key: torch.Tensor,
    bank_key: torch.Tensor,
    bank_value: torch.Tensor,
    bank_valid: torch.Tensor,
    similarity: str = "dot",
    *,
    topk: int = 0,
    kernel: float = 0.0,
) -> torch.Tensor:
    """STM's read: softmax over all T*h*w memory positions of the key affinity.

    Written as canonical attention, softmax(Q K^T + bias) V with the softmax on the last axis and
    the 1/sqrt(Ck) scale applied to Q before the first MatMul, so TensorRT can fuse it. The
    priors (both off by default) insert nodes between the first MatMul and the Softmax, so a
    read with a prior is not fusable; the MatMul -> Softmax -> MatMul stays dense either way.

    Args:
        query_key: (O, Ck, h, w) float, one query key per object; or (1, Ck, h, w) with an
            object-free bank_key (1, T, Ck, h, w): shared_memory_read.
        bank_key: (O, T, Ck, h, w) float, memory keys; empty slots must be finite (zeros).
        bank_value: (O, T, Cv, h, w) float.
        bank_valid: (O, T) float, 1.0 for filled slots, 0.0 for empty ones; at least one per
            object must be 1.
        similarity: "dot" (STM, q.k / sqrt(Ck)) or "l2" (STCN, (2 q.k - |k|^2) / sqrt(Ck), i.e.
            -|q - k|^2 / sqrt(Ck) without the query-only term that the softmax cancels). Both
            stay softmax(Q K^T + bias) V: L2 scales Q by 2 and adds -|k|^2 to the bias.
        topk: if > 0, each query position reads only its `topk` largest logits over the T*h*w
            memory positions (STCN); k is clamped to T*h*w. Ties with the k-th value are kept.
        kernel: if > 0, KMN's Gaussian kernel with this sigma (in feature cells): see
            kernel_log_prior. Applied before top-k, so top-k ranks the kernel-weighted logits.

    Returns:
        (O, Cv, h, w) memory readout. Empty slots get exactly zero weight.
    """
    if bank_key.shape[0] == 1 and query_key.shape[0] == 1:
        # an object-free key bank (shared keys): one affinity for all objects
        return shared_memory_read(query_key, bank_key, bank_value, bank_valid, similarity,
                                  topk=topk, kernel=kernel)
    o, t, _, h, w = bank_key.shape
    cv = bank_value.shape[2]
    q, k, bias = _query_keys_bias(query_key, bank_key, bank_valid, similarity)
    v = bank_value.permute(0, 1, 3, 4, 2).reshape(o, t * h * w, cv)  # (O, Thw, Cv)
    attn = _attention(q, k, bias, query_key, h, w, similarity, topk, kernel)  # (O, hw, Thw)
    out = torch.matmul(attn, v)  # (O, hw, Cv)
    return out.transpose(1, 2).reshape(o, cv, h, w)


def _query_keys_bias(query_key: torch.Tensor, bank_key: torch.Tensor, valid: torch.Tensor,
                     similarity: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention's operands for G key rows: q (G, hw, Ck) scaled, k (G, Thw, Ck) and the
    additive bias (G, 1, Thw): the empty-slot bias of `valid` (G, T), minus |k|^2 / sqrt(Ck)
    for the L2 affinity."""
    g, t, ck, h, w = bank_key.shape
    scale = (2.0 if similarity == "l2" else 1.0) / math.sqrt(ck)
    q = (query_key * scale).flatten(2).transpose(1, 2)
    k = bank_key.permute(0, 1, 3, 4, 2).reshape(g, t * h * w, ck)
    bias = ((1.0 - valid) * INVALID_SLOT_BIAS).to(q.dtype)
    bias = bias.unsqueeze(-1).expand(g, t, h * w).reshape(g, 1, t * h * w)
    if similarity == "l2":
        bias = bias - (k * k).sum(-1).unsqueeze(1) * (1.0 / math.sqrt(ck))
    return q, k, bias


def _attention(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, query_key: torch.Tensor, h, w,
    similarity: str, topk: int, kernel: float,
) -> torch.Tensor:
    """softmax(q k^T + bias [+ priors]) over the last axis: q (G, hw, Ck) scaled, k (G, Thw, Ck),
    bias (G, 1, Thw) -> (G, hw, Thw)."""
    ck = k.shape[-1]
    if not (topk or kernel):
        return torch.softmax(torch.matmul(q, k.transpose(1, 2)) + bias, dim=-1)
    if kernel and not torch.is_grad_enabled():
        logits, best = _kernel_logits_inference(q, k, bias, query_key, similarity)
    else:
        scores = torch.matmul(q, k.transpose(1, 2))  # (G, hw, Thw)
        logits = scores + bias
        if kernel:
            # training: the computation the recipes were measured with (bf16 rounding of other
            # forms would change their trajectories). The argmax runs over query positions, so
            # the query-only term -|q|^2 / sqrt(Ck) that the softmax cancels counts here (-|k|^2
            # is constant along that axis).
            q2 = (query_key * query_key).sum(1).flatten(1) * (1.0 / math.sqrt(ck))  # (G, hw)
            affinity = scores - q2.unsqueeze(-1) if similarity == "l2" else scores
            best = affinity.argmax(dim=1)  # (G, Thw) int64, flat index row * w + col
    if kernel:
        logits = logits + kernel_log_prior(best, h, w, kernel).to(logits.dtype)
    if topk:
        logits = keep_topk(logits, topk)
    return torch.softmax(logits, dim=-1)


def _kernel_logits_inference(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, query_key: torch.Tensor,
    similarity: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel read's logits q k^T + bias (G, hw, Thw) and each memory position's best query
    position (G, Thw) int64, for inference and export.

    The argmax runs on the transposed affinity (Thw, hw), along its contiguous last axis: along
    the query axis of (hw, Thw) it was a strided reduction, 44 % of read_decoder at 1080p. The
    additive terms ride in the MatMuls as one extra column each (q's and k's rows extended by
    [1 | bias] and [-1 | |q|^2 / sqrt(Ck)]), so that neither full-size product is read and
    written again to add them (two elementwise passes over (hw, Thw), ~10 ms of 70 at 480p).
    Same values up to summation order (natural set: identical masks).
    """
    ones_q = torch.ones_like(q[..., :1])  # (G, hw, 1)
    logits = torch.matmul(torch.cat([q, ones_q], dim=-1),
                          torch.cat([k, bias.transpose(1, 2)], dim=-1).transpose(1, 2))
    if similarity == "l2":
        # the argmax runs over query positions, so the query-only term -|q|^2 / sqrt(Ck) that
        # the softmax cancels counts here (-|k|^2 is constant along that axis)
        q2 = (query_key * query_key).sum(1).flatten(1) * (1.0 / math.sqrt(k.shape[-1]))
        affinity_t = torch.matmul(torch.cat([k, -torch.ones_like(k[..., :1])], dim=-1),
                                  torch.cat([q, q2.unsqueeze(-1)], dim=-1).transpose(1, 2))
    else:
        affinity_t = torch.matmul(k, q.transpose(1, 2))  # (G, Thw, hw)
    return logits, affinity_t.argmax(dim=-1)


# Floor of the per-object normalizer of the shared read (the attention an object's own valid
# slots receive): it only matters when an object's slots get (almost) no weight at all, where
# it keeps the readout finite (near zero) instead of dividing by zero.
SHARED_NORM_FLOOR = 1e-12


def shared_memory_read(
    query_key: torch.Tensor,
    bank_key: torch.Tensor,
    bank_value: torch.Tensor,
    bank_valid: torch.Tensor,
    similarity: str = "l2",
    *,
    topk: int = 0,
    kernel: float = 0.0,
) -> torch.Tensor:
    """The read of a shared-key model (STCN) with an object-free key bank: one affinity, one
    prior and one softmax per frame for all objects, then one batched readout.

    The softmax runs over the slots filled for any object; each object's readout is then
    renormalized over its own filled slots, which equals a softmax over those slots alone
    (softmax restricted to a subset S is attn_i / sum_{j in S} attn_j), so an object that joined
    later reads only the frames stored since. With every object filled in the same slots (the
    usual case) the normalizer is 1. Top-k ranks over the shared slots: with per-object slots
    that differ it can keep fewer than k positions for an object.

    Args:
        query_key: (1, Ck, h, w). bank_key: (1, T, Ck, h, w), empty slots finite (zeros).
        bank_value: (O, T, Cv, h, w). bank_valid: (O, T) float, 1.0 = filled slot; at least
            one per object.
        similarity, topk, kernel: as memory_read.

    Returns:
        (O, Cv, h, w) memory readout.
    """
    _, t, _, h, w = bank_key.shape
    o, _, cv = bank_value.shape[:3]
    # the slots filled for any object; each object's own are applied after the softmax
    any_valid = bank_valid.amax(dim=0, keepdim=True)  # (1, T)
    q, k, bias = _query_keys_bias(query_key, bank_key, any_valid, similarity)
    attn = _attention(q, k, bias, query_key, h, w, similarity, topk, kernel)  # (1, hw, Thw)
    valid = bank_valid.to(bank_value.dtype)  # (O, T)
    if not (topk or kernel):
        # (1, Thw, O*Cv + O): slot-major rows, the objects' values side by side, then each
        # object's validity per position (its normalizer), so that one MatMul reads every object
        # and the softmax keeps a single consumer: the attention pattern TensorRT fuses.
        v = (bank_value * valid[:, :, None, None, None]).permute(1, 3, 4, 0, 2)
        v = v.reshape(1, t * h * w, o * cv)
        per_slot = valid.transpose(0, 1).unsqueeze(1).expand(t, h * w, o)
        both = torch.matmul(attn, torch.cat([v, per_slot.reshape(1, t * h * w, o)], dim=2))[0]
        out = both[:, : o * cv].reshape(h * w, o, cv)
        norm = both[:, o * cv :].clamp(min=SHARED_NORM_FLOOR)  # (hw, O)
        out = out / norm.unsqueeze(-1)
        return out.permute(1, 2, 0).reshape(o, cv, h, w)
    # With a prior there is no fused attention to keep: the same product against the transposed
    # attention, (O*Cv + O, Thw) x (Thw, hw), whose rows are the bank's (T, Cv) swaps of whole
    # h*w planes and whose result is (O, Cv, h, w) already. The slot-major form above needs a
    # 5-D transpose of the bank and one of the result per frame (~4 ms per object at 480p).
    v = (bank_value * valid[:, :, None, None, None]).transpose(1, 2).reshape(o * cv, t * h * w)
    per_slot = valid.unsqueeze(-1).expand(o, t, h * w).reshape(o, t * h * w)
    both = torch.matmul(torch.cat([v, per_slot], dim=0), attn[0].transpose(0, 1))
    out = both[: o * cv].reshape(o, cv, h * w)  # (O*Cv + O, hw): values, then normalizers
    norm = both[o * cv :].clamp(min=SHARED_NORM_FLOOR)  # (O, hw)
    return (out / norm.unsqueeze(1)).reshape(o, cv, h, w)


def kernel_log_prior(
    best: torch.Tensor, h: int | torch.Tensor, w: int | torch.Tensor, sigma: float
) -> torch.Tensor:
    """Log of KMN's memory-to-query Gaussian kernel (Seong et al., ECCV 2020).

    Each memory position p finds the query position it matches best, q^(p) = argmax_q
    affinity(q, p); the read's weight of p for query position q is then multiplied by
    g(p, q) = exp(-|pos(q) - pos(q^(p))|^2 / (2 sigma^2)), i.e. -d^2 / (2 sigma^2) is added to
    the logit. A look-alike object elsewhere in the query frame then borrows little from the
    memory of the target, whose best matches sit around the target.

    Export: integer Div/Mul/Sub for (row, col), Range for the grid (h, w dynamic); the squared
    distance is separable, so the two axes are computed on small (G, h|w, Thw) tables and only
    their sum is (G, hw, Thw). Each axis's term is floored at KERNEL_LOG_FLOOR.

    Args:
        best: (G, Thw) int64, each memory position's best query position (row-major flat
            index row * w + col over the h x w query grid; not differentiated).
        h, w: the feature grid (ints, or traced sizes during export).
        sigma: kernel width in feature cells, > 0.

    Returns:
        (G, hw, Thw) float32 log-kernel in [2 * KERNEL_LOG_FLOOR, 0].
    """
    g, n = best.shape
    # Indices are >= 0, so truncation is floor division (a plain ONNX Div on int64).
    best_row = torch.div(best, w, rounding_mode="trunc")
    best_col = best - best_row * w
    # Positions and distances in float32 whatever the model's dtype: fp16/bf16 hold integers
    # exactly only up to 2048/256.
    dev = best.device
    rows = torch.arange(h, device=dev).to(torch.float32).view(1, -1, 1)  # (1, h, 1)
    cols = torch.arange(w, device=dev).to(torch.float32).view(1, -1, 1)  # (1, w, 1)
    neg_inv = -1.0 / (2.0 * sigma * sigma)
    dr = rows - best_row.to(torch.float32).unsqueeze(1)  # (G, h, Thw)
    dc = cols - best_col.to(torch.float32).unsqueeze(1)  # (G, w, Thw)
    term_r = (dr * dr * neg_inv).clamp(min=KERNEL_LOG_FLOOR)
    term_c = (dc * dc * neg_inv).clamp(min=KERNEL_LOG_FLOOR)
    return (term_r.unsqueeze(2) + term_c.unsqueeze(1)).reshape(g, -1, n)  # (G, h, w, Thw) flat


def keep_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits with every entry below its row's k-th largest replaced by INVALID_SLOT_BIAS.

    Export-friendly top-k: TopK gives only the threshold (its values output); the Softmax and
    the second MatMul stay dense, with no scatter. A replaced entry's weight is exp(-1e4 -
    max) = 0 in fp32 and fp16, like an empty slot's.

    Args:
        logits: (O, hw, Thw) float.
        k: >= 1; clamped to Thw at run time (h and w are dynamic in the exported graph, so the
            clamp is a Min on the traced shape there).

    Returns:
        (O, hw, Thw) logits.
    """
    n = logits.shape[-1]
    if isinstance(n, torch.Tensor):  # traced size (export): K becomes Min(k, Thw) in the graph
        k = torch.minimum(n, torch.tensor(k, dtype=n.dtype))
    else:
        k = min(k, n)
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (O, hw, 1)
    return torch.where(logits >= kth, logits, logits.new_tensor(INVALID_SLOT_BIAS))
