"""The memory read's priors (model/memory.py: top-k, KMN kernel) against explicit references."""

from __future__ import annotations

import math

import pytest
import torch

from mlvos.model.memory import memory_read

O, T, CK, CV, H, W = 2, 3, 8, 5, 3, 4


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(O, CK, H, W, generator=g)
    k = torch.randn(O, T, CK, H, W, generator=g) * 2
    v = torch.randn(O, T, CV, H, W, generator=g)
    # Object 0 has an empty middle slot holding garbage keys that would win every top-k and
    # every kernel argmax if it counted: it must get exactly zero weight all the same.
    valid = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    k[0, 1] = 50.0
    v[0, 1] = 1e3
    return q, k, v, valid


def _logits(q, k, valid, similarity: str) -> torch.Tensor:
    """(O, hw, Thw) plain affinities with -inf on empty slots (the definition, not the graph)."""
    qf = q.flatten(2).transpose(1, 2)  # (O, hw, Ck)
    kf = k.permute(0, 1, 3, 4, 2).reshape(O, T * H * W, CK)
    if similarity == "dot":
        a = qf @ kf.transpose(1, 2) / math.sqrt(CK)
    else:
        a = -torch.cdist(qf, kf) ** 2 / math.sqrt(CK)
    empty = (valid == 0).repeat_interleave(H * W, dim=1)[:, None]  # (O, 1, Thw)
    return a, a.masked_fill(empty, -math.inf)


def _read(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    vf = v.permute(0, 1, 3, 4, 2).reshape(O, T * H * W, CV)
    return (weights @ vf).transpose(1, 2).reshape(O, CV, H, W)


def _topk_reference(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Sort each row, keep its k largest, softmax over those, zero elsewhere."""
    weights = torch.zeros_like(logits)
    for o in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            row = logits[o, i]
            order = torch.argsort(row, descending=True)[:k]
            order = order[torch.isfinite(row[order])]  # an empty slot is never a candidate
            weights[o, i, order] = torch.softmax(row[order], dim=0)
    return weights


def _kernel_reference(affinity: torch.Tensor, logits: torch.Tensor, sigma: float):
    """KMN, one memory position at a time: q^(p) = argmax_q affinity, weights multiplied by
    exp(-|pos(q) - pos(q^(p))|^2 / (2 sigma^2)), renormalized."""
    g = torch.zeros_like(logits)
    for o in range(logits.shape[0]):
        for p in range(logits.shape[2]):
            best = int(torch.argmax(affinity[o, :, p]))
            br, bc = divmod(best, W)  # query positions are row-major over the H x W grid
            for qi in range(logits.shape[1]):
                r, c = divmod(qi, W)
                g[o, qi, p] = math.exp(-((r - br) ** 2 + (c - bc) ** 2) / (2 * sigma**2))
    w = torch.softmax(logits, dim=-1) * g
    return w / w.sum(-1, keepdim=True), g


@pytest.mark.parametrize("similarity", ["dot", "l2"])
@pytest.mark.parametrize("k", [1, 5, 23, 30, 1000])  # 24 valid (object 0), T*h*w = 36
def test_topk_matches_sorted_reference(similarity, k):
    q, key, v, valid = _problem()
    _, logits = _logits(q, key, valid, similarity)
    ref = _read(_topk_reference(logits, k), v)
    out = memory_read(q, key, v, valid, similarity, topk=k)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.abs().max() < 100  # the empty slot's values (1e3) never leak in


def test_topk_drops_entries_at_any_logit_scale():
    # Keys 10x farther: L2 logits around -300. A dropped entry must still weigh nothing.
    q, key, v, valid = _problem()
    key = key * 10
    _, logits = _logits(q, key, valid, "l2")
    assert logits[torch.isfinite(logits)].max() < -50
    ref = _read(_topk_reference(logits, 5), v)
    torch.testing.assert_close(memory_read(q, key, v, valid, "l2", topk=5), ref, atol=1e-5,
                               rtol=1e-5)


def test_topk_above_positions_is_the_plain_read():
    q, key, v, valid = _problem()
    plain = memory_read(q, key, v, valid, "l2")
    assert torch.equal(memory_read(q, key, v, valid, "l2", topk=T * H * W), plain)
    assert torch.equal(memory_read(q, key, v, valid, "l2", topk=10**6), plain)


# Training and inference compute the kernel read in different forms (model/memory.py: the
# inference form takes the argmax on a transposed affinity and folds the additive terms into
# the MatMuls): both must match the definition.
GRAD_MODES = pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])


@GRAD_MODES
@pytest.mark.parametrize("similarity", ["dot", "l2"])
@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_kernel_matches_per_position_reference(similarity, sigma, grad):
    q, key, v, valid = _problem(1)
    affinity, logits = _logits(q, key, valid, similarity)
    weights, g = _kernel_reference(affinity, logits, sigma)
    assert g.min() < 0.25  # the kernel really reweights at these sigmas
    with torch.set_grad_enabled(grad):
        out = memory_read(q, key, v, valid, similarity, kernel=sigma)
    torch.testing.assert_close(out, _read(weights, v), atol=1e-5, rtol=1e-5)
    assert out.abs().max() < 100


@GRAD_MODES
def test_kernel_then_topk_combined(grad):
    q, key, v, valid = _problem(2)
    affinity, logits = _logits(q, key, valid, "l2")
    _, g = _kernel_reference(affinity, logits, 1.0)
    ref = _read(_topk_reference(logits + g.log(), 7), v)
    with torch.set_grad_enabled(grad):
        out = memory_read(q, key, v, valid, "l2", topk=7, kernel=1.0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@GRAD_MODES
def test_kernel_argmax_uses_the_full_l2_affinity(grad):
    # With L2 the query-only term -|q|^2 changes which query position a memory position matches
    # best: a query key of large norm must not win the argmax because of its norm.
    q, key, v, valid = _problem(3)
    q[:, :, 0, 0] *= 10.0
    affinity, logits = _logits(q, key, valid, "l2")
    weights, _ = _kernel_reference(affinity, logits, 0.7)
    with torch.set_grad_enabled(grad):
        out = memory_read(q, key, v, valid, "l2", kernel=0.7)
    torch.testing.assert_close(out, _read(weights, v), atol=1e-5, rtol=1e-5)


def test_priors_are_differentiable_and_finite_in_half_precision():
    q, key, v, valid = _problem()
    q.requires_grad_(True)
    memory_read(q, key, v, valid, "l2", topk=5, kernel=0.3).sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    # bf16 (the torch backend's CPU reduced precision): a sigma of 0.05 cell puts every axis
    # term on the kernel's floor; the read stays finite.
    out = memory_read(*(t.bfloat16() for t in (q.detach(), key, v, valid)), "l2", topk=5,
                      kernel=0.05)
    assert torch.isfinite(out).all()


def test_training_reads_through_the_priors():
    # Training's clip forward calls STMNet.read_decode, which passes the config's priors.
    import dataclasses

    from mlvos.model.registry import build_model, get_config
    from mlvos.model.train.clip import ClipModel

    cfg = dataclasses.replace(get_config("tiny"), read_topk=20, read_kernel=3.0)
    net = build_model(config=cfg, seed=0)
    frames = torch.randint(0, 256, (1, 3, 3, 64, 64), dtype=torch.uint8)
    masks = (torch.rand(1, 2, 64, 64) > 0.5).float()
    out = ClipModel(net).train()(frames, masks, torch.ones(1, 2))
    out.logsumexp(1).mean().backward()
    assert torch.isfinite(out).all()
    assert net.query_encoder.kv.key.weight.grad.abs().sum() > 0  # through the affinities
