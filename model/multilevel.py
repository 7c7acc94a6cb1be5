"""The paper's multi-level backbone: repeated "down-and-up" levels with cross-level aggregation.

Level 1: a ResNet down path (stem, stages to stride 16 or 32) and an up path that walks from the
coarsest scale to stride 4, upsampling bilinearly (x2) and adding the same-scale down feature after
a 1x1 conv+BN to a common width (`up_channels`), then ReLU.

Level l > 1: takes the previous level's stride-4 up output (1x1 conv+BN+ReLU to the stem width, as
MSPN's cross_conv), runs its own down path, and after each down stage k adds two cross-level flows,
each a 1x1 conv+BN+ReLU: one from the previous level's down unit k and one from its up unit k
(the paper's red lines; MSPN's skip1/skip2). It then runs its own up path.

The output handed to STM is the last level's feature pyramid at strides 4, 8, 16: its up path
(`pyramid="up"`, default) or its down units (`pyramid="down"`; levels=1 + "down" is a plain ResNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlvos.model.config import BackboneConfig
from mlvos.model.resnet import ResNetDown, conv_bn


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    # A constant scale (not a size taken from another tensor) exports to a Resize with constant
    # scales, which keeps the ONNX graph free of Shape arithmetic; padded sizes make it exact.
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class UpPath(nn.Module):
    """Coarse-to-fine path: u_k = ReLU(lateral_k(down_k) + upsample(u_{k+1}))."""

    def __init__(self, in_channels: list[int], up_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn(c, up_channels, relu=False) for c in in_channels)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, downs: list[torch.Tensor]) -> list[torch.Tensor]:
        """downs (fine -> coarse) -> up outputs (fine -> coarse), all `up_channels` wide."""
        u = self.relu(self.lateral[-1](downs[-1]))
        ups = [u]
        for k in range(len(downs) - 2, -1, -1):
            u = self.relu(self.lateral[k](downs[k]) + upsample2x(u))
            ups.append(u)
        return ups[::-1]


class Level(nn.Module):
    def __init__(
        self,
        cfg: BackboneConfig,
        index: int,
        with_up: bool,
        extra_stem_inputs: int = 0,
    ):
        super().__init__()
        self.index = index
        scale = 1.0 if index == 0 else cfg.later_widths_scale
        widths = tuple(int(round(w * scale)) for w in cfg.widths[: len(cfg.layers)])
        self.down = ResNetDown(
            cfg.block,
            cfg.layers,
            widths,
            stem_width=cfg.stem_width,
            with_stem=index == 0,
            extra_stem_inputs=extra_stem_inputs if index == 0 else 0,
        )
        chans = cfg.stage_channels(index)
        if index > 0:
            prev = cfg.stage_channels(index - 1)
            self.cross_conv = conv_bn(cfg.up_channels, cfg.stem_width)
            self.skip_down = nn.ModuleList(conv_bn(p, c) for p, c in zip(prev, chans))
            self.skip_up = nn.ModuleList(conv_bn(cfg.up_channels, c) for c in chans)
        self.up = UpPath(list(chans), cfg.up_channels) if with_up else None

    def forward(
        self,
        x: torch.Tensor,
        prev_down: list[torch.Tensor] | None = None,
        prev_up: list[torch.Tensor] | None = None,
        extras: list[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        if self.index == 0:
            x = self.down.stem(x, extras)
        else:
            x = self.cross_conv(prev_up[0])
        downs = []
        for k in range(self.down.num_stages):
            x = self.down.stage(k, x)
            if self.index > 0:
                x = x + self.skip_down[k](prev_down[k]) + self.skip_up[k](prev_up[k])
            downs.append(x)
        ups = self.up(downs) if self.up is not None else None
        return downs, ups


class MultiLevelBackbone(nn.Module):
    """Multi-level (or, with levels=1 and pyramid="down", plain ResNet) feature extractor.

    Args:
        cfg: backbone configuration.
        extra_stem_inputs: single-channel maps fused before the stem's BN (memory encoder: 2).

    Forward:
        x: (B, 3, H, W) normalized float image, H and W multiples of `cfg.stride`.
        extras: list of (B, 1, H, W) maps, length `extra_stem_inputs`.
        Returns (f4, f8, f16): features at strides 4, 8, 16 with `cfg.feature_channels()`.
    """

    def __init__(self, cfg: BackboneConfig, extra_stem_inputs: int = 0):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.levels = nn.ModuleList()
        for i in range(cfg.levels):
            last = i == cfg.levels - 1
            with_up = (not last) or cfg.pyramid == "up"
            self.levels.append(Level(cfg, i, with_up, extra_stem_inputs))

    def forward(
        self, x: torch.Tensor, extras: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        downs = ups = None
        for level in self.levels:
            downs, ups = level(x, downs, ups, extras)
        feats = ups if self.cfg.pyramid == "up" else downs
        return feats[0], feats[1], feats[2]
