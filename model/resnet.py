"""ResNet building blocks with torchvision-compatible parameter names.

A torchvision ImageNet state dict (resnet18/50 `.pth`, downloaded by the user) loads into
`ResNetDown` with `load_torchvision_weights` (the `fc.*` keys are dropped). Nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_layer(block: type, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    mods = [block(inplanes, planes, stride, downsample)]
    mods += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*mods)


def conv_bn(
    cin: int, cout: int, k: int = 1, relu: bool = True, stride: int = 1
) -> nn.Sequential:
    """k x k conv (no bias) + BN (+ ReLU): MSPN's 1x1 units."""
    mods: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)
    ]
    if relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class ResNetDown(nn.Module):
    """The down path of one level: optional stem (conv1/bn1/relu/maxpool) and layer1..layerN.

    Args:
        block: "basic" or "bottleneck".
        layers: blocks per stage (3 or 4 stages).
        widths: base width per stage.
        stem_width: stem channels; also the input channels of layer1.
        with_stem: level 1 has the stem; later levels take a stride-4 input instead.
        extra_stem_inputs: single-channel maps fused by their own 7x7 conv, summed with conv1's
            output before bn1 (STM's memory encoder: object and "others" probabilities).
    """

    def __init__(
        self,
        block: str,
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        stem_width: int = 64,
        with_stem: bool = True,
        extra_stem_inputs: int = 0,
    ):
        super().__init__()
        btype = BLOCK_TYPES[block]
        self.with_stem = with_stem
        if with_stem:
            self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        # Named conv1_m / conv1_o as in STM's Encoder_M.
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(1, stem_width, 7, 2, 3, bias=False) for _ in range(extra_stem_inputs)
        )
        inplanes = stem_width
        self.out_channels: list[int] = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", make_layer(btype, inplanes, w, n, 1 if i == 0 else 2))
            inplanes = w * btype.expansion
            self.out_channels.append(inplanes)
        self.num_stages = len(layers)

    def stem(self, x: torch.Tensor, extras: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, 3, H, W) normalized image (+ (B, 1, H, W) extras) -> (B, stem_width, H/4, W/4)."""
        y = self.conv1(x)
        for conv, e in zip(self.extra_convs, extras or []):
            y = y + conv(e)
        return self.maxpool(self.relu(self.bn1(y)))

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"layer{i + 1}")(x)


def load_torchvision_weights(module: ResNetDown, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Copy a torchvision ResNet state dict into `module` (stem only if the module has one).

    Returns:
        The module's parameter names that received weights.

    Raises:
        ValueError: a tensor's shape differs (e.g. ResNet-18 weights into a ResNet-50 backbone).
    """
    own = module.state_dict()
    loaded, mismatched = [], []
    for name, tensor in state_dict.items():
        if name.startswith("fc.") or name not in own:
            continue
        if own[name].shape != tensor.shape:
            mismatched.append(
                f"{name}: weights {tuple(tensor.shape)} vs model {tuple(own[name].shape)}"
            )
            continue
        own[name] = tensor
        loaded.append(name)
    if mismatched:
        raise ValueError(
            "ImageNet weights do not fit this backbone (wrong depth/width?): "
            + "; ".join(mismatched[:5])
        )
    module.load_state_dict(own)
    return loaded
