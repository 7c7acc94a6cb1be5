"""Training losses over ClipModel's aggregated logits.

"ce" is the paper's plain cross-entropy over every pixel. "bootstrap" is bootstrapped
cross-entropy (as STCN trains STM-style models): the mean over only the hardest fraction of
pixels, which ramps from 100 % to 15 % over the first 20 % of the steps. Background pixels far
from any object are easy after a few hundred steps and would otherwise dominate the mean; the
hard pixels are object boundaries and confusions between objects, which is what is left to learn.
"bootstrap+dice" adds a soft Dice loss per object over the clip (as Cutie trains): pixel-wise
cross-entropy weighs an object by its area, so a small object's few pixels barely move it; Dice
normalizes by each object's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bootstrap", "bootstrap+dice")
BOOTSTRAP_FINAL = 0.15
BOOTSTRAP_RAMP = 0.2  # fraction of the steps over which the kept fraction falls to its final value


def bootstrap_fraction(step: int, total: int) -> float:
    """Fraction of pixels kept at optimizer step `step` (0-based) of `total`."""
    ramp = max(1.0, BOOTSTRAP_RAMP * total)
    p = min(1.0, step / ramp)
    return 1.0 + (BOOTSTRAP_FINAL - 1.0) * p


def clip_loss(logits: torch.Tensor, labels: torch.Tensor, *, kind: str = "ce", step: int = 0,
              total: int = 1) -> torch.Tensor:
    """Loss of one batch.

    Args:
        logits: (B, T-1, K+1, H, W) aggregated logits (background first), any float dtype.
        labels: (B, T-1, H, W) int64 slot ids 0..K.
        kind: "ce", "bootstrap" or "bootstrap+dice"; step / total: position in training
            (bootstrap ramp).

    Returns:
        scalar float32 loss.
    """
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(0, 1), reduction="none")
    if kind == "ce":
        return ce.mean()
    flat = ce.flatten(1)  # per frame: (B*(T-1), H*W)
    k = max(1, int(round(bootstrap_fraction(step, total) * flat.shape[1])))
    loss = flat.mean() if k >= flat.shape[1] else flat.topk(k, dim=1, sorted=False).values.mean()
    if kind == "bootstrap+dice":
        loss = loss + dice_loss(logits, labels)
    return loss


def dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss, 1 - (2|P.G| + 1) / (|P| + |G| + 1), per object over all frames of a clip,
    averaged over the objects present somewhere in the clip's labels (padding slots and objects
    that left before frame 1 add nothing).

    Args:
        logits: (B, T-1, K+1, H, W) aggregated logits (background first).
        labels: (B, T-1, H, W) int64 slot ids 0..K.

    Returns:
        scalar float32 loss (0 when no clip has an object).
    """
    slots = logits.shape[2]
    probs = torch.softmax(logits.float(), dim=2)[:, :, 1:]  # (B, T-1, K, H, W)
    onehot = F.one_hot(labels, slots)[..., 1:].permute(0, 1, 4, 2, 3).float()
    inter = (probs * onehot).sum(dim=(1, 3, 4))  # (B, K)
    area_p, area_g = probs.sum(dim=(1, 3, 4)), onehot.sum(dim=(1, 3, 4))
    present = area_g > 0
    if not bool(present.any()):
        return logits.new_zeros((), dtype=torch.float32)
    dice = 1.0 - (2.0 * inter + 1.0) / (area_p + area_g + 1.0)
    return dice[present].mean()
