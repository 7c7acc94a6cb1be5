"""Training wrapper: STM's clip forward built from the network's stage methods."""

from __future__ import annotations

import torch
from torch import nn

from mlvos.model.decoder import soft_aggregate_logits
from mlvos.model.encoders import QueryFeatures
from mlvos.model.network import STMNet


class ClipModel(nn.Module):
    """Segment frames 1..T-1 of a clip from frame 0's ground truth, as STM trains.

    Frame 0 is memorized with its ground-truth masks; each later frame is segmented by reading
    all frames memorized so far, and its soft prediction is memorized in turn.

    Forward:
        frames: (B, T, 3, H, W) pixels in [0, 255] (uint8 or float), H/W multiples of the stride.
        first_masks: (B, K, H, W) float {0, 1}, frame 0's masks for K object slots.
        obj_valid: (B, K) float, 1 for real objects, 0 for padding slots.

    Returns:
        (B, T-1, K+1, H, W) aggregated logits (background first) for frames 1..T-1;
        cross-entropy against the label maps is the training loss.
    """

    def __init__(self, net: STMNet):
        super().__init__()
        self.net = net

    def forward(
        self, frames: torch.Tensor, first_masks: torch.Tensor, obj_valid: torch.Tensor
    ) -> torch.Tensor:
        b, t = frames.shape[:2]
        k = first_masks.shape[1]
        net = self.net
        probs = first_masks.float() * obj_valid[..., None, None]
        keys, values, outputs = [], [], []
        # With shared keys a memorized frame's key is its query key: encode frames 1..T-1 as
        # queries once and frame 0's key alone.
        shared = net.config.shared_key
        prev_key = net.query_encoder.key_only(frames[:, 0]) if shared else None
        for i in range(t - 1):
            mk, mv = net.memory_kv(frames[:, i], probs, prev_key)  # (B*K, C, h, w)
            keys.append(mk)
            values.append(mv)
            q = net.query_encoder(frames[:, i + 1])
            prev_key = q.key
            # Query features repeated per object, as the recipes were measured with: sharing them
            # per frame (batch B, model.decoder.per_object) is the same math, but under bf16
            # autocast its different rounding changed the 4-minute demo's trajectory (natural
            # J&F 31.4 -> 25.6 on its 4 videos), so training keeps the measured computation.
            q = QueryFeatures(*(x.repeat_interleave(k, dim=0) for x in q))
            bank_key = torch.stack(keys, dim=1)
            bank_value = torch.stack(values, dim=1)
            valid = torch.ones(b * k, len(keys), device=frames.device)
            logits = net.read_decode(q, bank_key, bank_value, valid).view(b, k, *frames.shape[-2:])
            agg = soft_aggregate_logits(logits, obj_valid)  # (B, K+1, H, W)
            outputs.append(agg)
            probs = torch.softmax(agg, dim=1)[:, 1:]
        return torch.stack(outputs, dim=1)

    def train(self, mode: bool = True) -> ClipModel:
        super().train(mode)
        if mode and self.net.config.freeze_bn:
            # STM keeps the encoders' BatchNorm statistics frozen (batch 4 is too small for them).
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self
