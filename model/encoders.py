"""STM's query and memory encoders on top of the (multi-level) backbone, with key/value heads."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mlvos.model.config import BackboneConfig
from mlvos.model.multilevel import MultiLevelBackbone
from mlvos.model.resnet import BasicBlock, conv_bn
from mlvos.runtime.spec import FEATURE_STRIDE, PIXEL_MEAN, PIXEL_STD


class QueryFeatures(NamedTuple):
    """Output of the query encoder for B frames (h, w = H/16, W/16).

    key:   (B, Ck, h, w)   float, unscaled (the read applies 1/sqrt(Ck))
    value: (B, Cv, h, w)   float
    skip8: (B, C8, 2h, 2w) float, decoder skip at stride 8
    skip4: (B, C4, 4h, 4w) float, decoder skip at stride 4
    """

    key: torch.Tensor
    value: torch.Tensor
    skip8: torch.Tensor
    skip4: torch.Tensor


class Normalize(nn.Module):
    """Pixels in [0, 255] (uint8/float) -> ImageNet-normalized float (runtime.spec constants)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return (frame.to(self.mean.dtype) - self.mean) / self.std


class KeyValue(nn.Module):
    """STM's key/value projection: two 3x3 convs with bias. key_dim None: value only (a memory
    encoder whose keys come from the query encoder), and the key comes back as None."""

    def __init__(self, in_dim: int, key_dim: int | None, value_dim: int):
        super().__init__()
        self.key = None if key_dim is None else nn.Conv2d(in_dim, key_dim, 3, 1, 1)
        self.value = nn.Conv2d(in_dim, value_dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        return (None if self.key is None else self.key(x)), self.value(x)


class QueryEncoder(nn.Module):
    def __init__(self, cfg: BackboneConfig, key_dim: int, value_dim: int):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = MultiLevelBackbone(cfg)
        self.kv = KeyValue(cfg.feature_channels()[2], key_dim, value_dim)

    def forward(self, frame: torch.Tensor) -> QueryFeatures:
        """frame: (B, 3, H, W) pixels in [0, 255], uint8 or float, H/W multiples of the stride."""
        f4, f8, f16 = self.backbone(self.normalize(frame))
        key, value = self.kv(f16)
        return QueryFeatures(key, value, f8, f4)

    def key_only(self, frame: torch.Tensor) -> torch.Tensor:
        """(B, Ck, h, w) query key of B frames (the memory key when keys are shared)."""
        _, _, f16 = self.backbone(self.normalize(frame))
        return self.kv.key(f16)


class MemoryEncoder(nn.Module):
    """Frame + object probability + "others" probability, fused before the stem's BN (STM).

    With key_dim None (shared keys) it has no key projection and returns key None.
    """

    def __init__(self, cfg: BackboneConfig, key_dim: int | None, value_dim: int):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = MultiLevelBackbone(cfg, extra_stem_inputs=2)
        self.kv = KeyValue(cfg.feature_channels()[2], key_dim, value_dim)

    def forward(
        self, frame: torch.Tensor, probs: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Encode B frames with K object slots each.

        Args:
            frame: (B, 3, H, W) pixels in [0, 255].
            probs: (B, K, H, W) float in [0, 1], object probabilities (0 for empty slots).

        Returns:
            key (B*K, Ck, h, w) or None (shared keys) and value (B*K, Cv, h, w), objects of a
            frame contiguous.
        """
        b, k, h, w = probs.shape
        x = self.normalize(frame)
        # "others" = clamp(sum of the other objects' probabilities, 0, 1), as STM.
        others = (probs.sum(dim=1, keepdim=True) - probs).clamp(0.0, 1.0)
        x = x.unsqueeze(1).expand(b, k, 3, h, w).reshape(b * k, 3, h, w)
        m = probs.reshape(b * k, 1, h, w)
        o = others.reshape(b * k, 1, h, w)
        _, _, f16 = self.backbone(x, [m, o])
        return self.kv(f16)


class LateFusionMemoryEncoder(nn.Module):
    """Memory encoder that encodes the frame once and each object's masks lightly (late fusion,
    as SwiftNet's light-aggregation encoder; `ModelConfig.memory_fusion="late"`).

    STM fuses the masks into the backbone's stem, so the whole backbone runs once per object;
    here the frame's stride-16 features are computed once per frame and each object adds only a
    small convolution path over its (object, others) probabilities, pooled to stride 4 and
    convolved down to stride 16, fused with the frame features (and the features weighted by
    the object's pooled probability) through a 3x3 conv and a residual block. Same interface as
    MemoryEncoder.
    """

    def __init__(self, cfg: BackboneConfig, key_dim: int | None, value_dim: int,
                 mask_width: int = 16, fuse_width: int = 64):
        super().__init__()
        self.normalize = Normalize()
        self.backbone = MultiLevelBackbone(cfg)
        c16 = cfg.feature_channels()[2]
        w = mask_width
        self.mask_path = nn.Sequential(
            conv_bn(2, w, 3),
            conv_bn(w, 2 * w, 3, stride=2),
            conv_bn(2 * w, 2 * w, 3, stride=2),
        )
        self.fuse = nn.Sequential(conv_bn(2 * c16 + 2 * w, fuse_width, 3),
                                  BasicBlock(fuse_width, fuse_width))
        self.kv = KeyValue(fuse_width, key_dim, value_dim)

    def forward(
        self, frame: torch.Tensor, probs: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """frame (B, 3, H, W) in [0, 255], probs (B, K, H, W) in [0, 1] -> key (B*K, Ck, h, w)
        or None (shared keys) and value (B*K, Cv, h, w), objects of a frame contiguous."""
        b, k, h, w = probs.shape
        _, _, f16 = self.backbone(self.normalize(frame))  # once per frame
        others = (probs.sum(dim=1, keepdim=True) - probs).clamp(0.0, 1.0)
        masks = torch.stack([probs, others], dim=2).reshape(b * k, 2, h, w)
        m = self.mask_path(F.avg_pool2d(masks, 4))  # (B*K, 2w, h/16, w/16)
        area = F.avg_pool2d(masks[:, :1], FEATURE_STRIDE)  # the object's share of each cell
        f = f16.unsqueeze(1).expand(b, k, *f16.shape[1:]).reshape(b * k, *f16.shape[1:])
        x = self.fuse(torch.cat([f, f * area.to(f.dtype), m.to(f.dtype)], dim=1))
        return self.kv(x)
