"""Learning-rate schedules as LambdaLR factors (restored on resume through the scheduler state).

The factor is a pure function of the step, so the scheduler's own state (its step count) is all
that a checkpoint needs; the lambda is rebuilt from the run's options.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")

# Paper (Sec. 3.3): Adam, 1e-5 for pre-training, 5e-6 for main training and fine-tuning.
PAPER_LR = {"pretrain": 1e-5, "main": 5e-6, "finetune": 5e-6}


def lr_factor(step: int, *, schedule: str, warmup: int, total: int, final: float = 0.01) -> float:
    """Multiplier of the base lr before optimizer step `step` (0-based).

    constant: linear warm-up over `warmup` steps, then 1 (the paper's fixed lr).
    cosine:   warm-up, then cosine decay from 1 to `final` at `total` steps.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    p = min(1.0, (step - warmup) / span)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def make_scheduler(optimizer, *, schedule: str, warmup: int, total: int):
    """torch LambdaLR implementing `lr_factor`."""
    import functools

    import torch

    fn = functools.partial(_factor, schedule=schedule, warmup=warmup, total=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def _factor(step: int, *, schedule: str, warmup: int, total: int) -> float:
    return lr_factor(step, schedule=schedule, warmup=warmup, total=total)
