"""STM's refine decoder (no BatchNorm) and multi-object soft aggregation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlvos.model.multilevel import upsample2x
from mlvos.runtime.spec import AGG_EPS


def per_object(x: torch.Tensor, objects: int) -> torch.Tensor:
    """Query features of batch 1 (inference: broadcast as is) or B (training: B frames of
    objects // B objects each, objects of a frame contiguous) -> broadcastable over `objects`."""
    b = x.shape[0]
    return x if b in (1, objects) else x.repeat_interleave(objects // b, dim=0)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(conv(relu(x))))."""

    def __init__(self, indim: int, outdim: int | None = None):
        super().__init__()
        outdim = outdim or indim
        self.conv1 = nn.Conv2d(indim, outdim, 3, 1, 1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, 1, 1)
        self.downsample = nn.Conv2d(indim, outdim, 3, 1, 1) if indim != outdim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.relu(x))
        r = self.conv2(F.relu(r))
        return (x if self.downsample is None else self.downsample(x)) + r


class Refine(nn.Module):
    def __init__(self, skip_dim: int, dim: int):
        super().__init__()
        self.convFS = nn.Conv2d(skip_dim, dim, 3, 1, 1)
        self.ResFS = ResBlock(dim)
        self.ResMM = ResBlock(dim)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """skip (1, B or O, C, 2h, 2w) (the query's: object-independent, so computed once per
        frame and broadcast, see per_object), coarse (O, dim, h, w) -> (O, dim, 2h, 2w)."""
        s = self.ResFS(self.convFS(skip))
        return self.ResMM(per_object(s, coarse.shape[0]) + upsample2x(coarse))


class Decoder(nn.Module):
    """(readout ++ query value) at stride 16 + skips at 8 and 4 -> one fg logit per object."""

    def __init__(self, in_dim: int, skip8_dim: int, skip4_dim: int, dim: int):
        super().__init__()
        self.convFM = nn.Conv2d(in_dim, dim, 3, 1, 1)
        self.ResMM = ResBlock(dim)
        self.RF3 = Refine(skip8_dim, dim)
        self.RF2 = Refine(skip4_dim, dim)
        # One logit (STCN-style) instead of STM's two: softmax over two logits is sigmoid(l1 - l0).
        self.pred = nn.Conv2d(dim, 1, 3, 1, 1)

    def forward(self, readout: torch.Tensor, value: torch.Tensor, skip8: torch.Tensor,
                skip4: torch.Tensor) -> torch.Tensor:
        """readout (O, Cv, h, w) ++ the query value (1, B or O, Cv, h, w), skip8 (same batch, .,
        2h, 2w), skip4 (same batch, ., 4h, 4w) -> (O, 16h, 16w) foreground logits (B: training
        frames of O // B objects each).

        Query features with batch 1 are shared by every object: their convolutions run once and
        broadcast over O (convFM's input is a concatenation, so its convolution splits into a
        readout part per object and a value part once), so no full-resolution work is repeated
        per object except what depends on the object."""
        if value.shape[0] == readout.shape[0]:
            x = self.convFM(torch.cat([readout, value], dim=1))
        else:
            cv = readout.shape[1]
            w, b = self.convFM.weight, self.convFM.bias
            x = F.conv2d(readout, w[:, :cv], None, padding=1) + per_object(
                F.conv2d(value, w[:, cv:], b, padding=1), readout.shape[0])
        m = self.ResMM(x)
        m = self.RF3(skip8, m)
        m = self.RF2(skip4, m)
        p = self.pred(F.relu(m))
        p = F.interpolate(p, scale_factor=4.0, mode="bilinear", align_corners=False)
        return p[:, 0]


def soft_aggregate_logits(
    fg_logits: torch.Tensor, obj_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """STM's soft aggregation of independent per-object predictions, as logits.

    Args:
        fg_logits: (..., O, H, W) per-object foreground logits.
        obj_valid: optional (..., O) float/bool; empty object slots get probability 0.

    Returns:
        (..., O+1, H, W) logits whose softmax over dim -3 is the aggregated distribution,
        background first. Kept in float32 (the clamp at 1e-7 is not representable in float16).
    """
    # STM's formula is logit(clamp(p, eps, 1 - eps)) for each object and for the background
    # prod(1 - p). It is computed here without forming p near 1, where float32 rounds
    # sigmoid(x) to steps of 6e-8: logit(clamp(sigmoid(x))) == clamp(x, -lim, lim) exactly,
    # and 1 - p == sigmoid(-x). Through the rounded form, a 1-ulp difference between two
    # backends' sigmoid moved a confident object's logit by up to ~0.1 and flipped labels
    # between confident objects; now saturated objects tie exactly (argmax: first) everywhere.
    x = fg_logits.float()
    lim = math.log((1.0 - AGG_EPS) / AGG_EPS)
    obj = x.clamp(-lim, lim)
    one_minus_p = torch.sigmoid(-x)
    if obj_valid is not None:
        valid = obj_valid.to(x.dtype)[..., None, None] > 0
        obj = torch.where(valid, obj, torch.full_like(obj, -lim))
        one_minus_p = torch.where(valid, one_minus_p, torch.ones_like(one_minus_p))
    bg = torch.prod(one_minus_p, dim=-3, keepdim=True).clamp(AGG_EPS, 1.0 - AGG_EPS)
    return torch.cat([torch.log(bg / (1.0 - bg)), obj], dim=-3)


def soft_aggregate(fg_logits: torch.Tensor) -> torch.Tensor:
    """(O, H, W) foreground logits -> (O+1, H, W) probabilities summing to one, background first."""
    x = soft_aggregate_logits(fg_logits)
    # softmax over the object axis written out: onnxruntime's Softmax on a non-last axis
    # transposes the whole map twice (8.4 -> 16.5 ms for 1 -> 3 objects at 480p, the largest
    # per-object cost of read_decoder); these five elementwise passes take 1.7-2.9 ms. Same
    # values to 1 ulp.
    e = torch.exp(x - x.amax(dim=-3, keepdim=True))
    return e / e.sum(dim=-3, keepdim=True)


def aggregate_outputs(fg_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, H, W) foreground logits -> obj_probs (O, H, W) float32 and labels (H, W) uint8.

    obj_probs is what the memory encoder takes next; labels holds the argmax slot (0 = background,
    k = k-th object), so a runtime maps slots to object ids with a lookup table.
    """
    probs = soft_aggregate(fg_logits)
    return probs[1:], probs.argmax(dim=0).to(torch.uint8)
