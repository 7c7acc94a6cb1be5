"""Training losses over ClipModel's aggregated logits.

"ce" is the paper's plain cross-entropy over every pixel. "bootstrap" is bootstrapped
cross-entropy (as STCN trains STM-style models): the mean over only the hardest fraction of
pixels, which ramps from 100 % to 15 % over the first 20 % of the steps. Background pixels far
from any object are easy after a few hundred steps and would otherwise dominate the mean; the
hard pixels are object boundaries and confusions between objects, which is what is left to learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bootstrap")
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
        kind: "ce" or "bootstrap"; step / total: position in training (bootstrap ramp).

    Returns:
        scalar float32 loss.
    """
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(0, 1), reduction="none")
    if kind == "ce":
        return ce.mean()
    flat = ce.flatten(1)  # per frame: (B*(T-1), H*W)
    k = max(1, int(round(bootstrap_fraction(step, total) * flat.shape[1])))
    if k >= flat.shape[1]:
        return flat.mean()
    return flat.topk(k, dim=1, sorted=False).values.mean()
