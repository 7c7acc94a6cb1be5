"""Load a locally downloaded torchvision ImageNet ResNet state dict into every backbone."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mlvos.errors import CheckpointError
from mlvos.model.network import STMNet
from mlvos.model.resnet import load_torchvision_weights


def load_imagenet_weights(model: STMNet, path: str | os.PathLike) -> int:
    """Copy torchvision ResNet weights into the down path of every level of both encoders.

    Level 1 receives the stem and all stages; later levels (which have no stem) receive the
    stages when their widths match. The memory encoder's extra mask convs stay randomly
    initialized, as in STM. Nothing is downloaded: `path` is a file the user already has
    (e.g. resnet50-0676ba61.pth from torchvision).

    Returns:
        Number of tensors loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ImageNet weights {path} do not exist")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read ImageNet weights {path}: {type(e).__name__}: {e}"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "layer1.0.conv1.weight" not in sd:
        raise CheckpointError(
            f"{path} is not a torchvision ResNet state dict (no 'layer1.0.conv1.weight' key)"
        )
    n = 0
    for enc in (model.query_encoder, model.memory_encoder):
        for level in enc.backbone.levels:
            try:
                n += len(load_torchvision_weights(level.down, sd))
            except ValueError as e:
                if level.index == 0:
                    raise CheckpointError(f"{path}: {e}") from None
                # Later levels may be narrower than a torchvision ResNet by design.
    return n
