"""A short, cached CPU recipe that trains the `tiny` variant on synthetic data (for `mlvos demo`
and `make train-demo`): pre-training on synthetic static simulation, then main training on
synthetic videos, each stopped by a time limit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlvos.errors import CheckpointError

# Bump when the recipe changes, so cached demo checkpoints are retrained.
DEMO_RECIPE = 1


def demo_recipe(minutes: float, *, seed: int = 0, threads: int | None = 2) -> list[dict]:
    """Options of the two stages (TrainOptions fields) for a `minutes`-long CPU run."""
    pre_min = max(0.25, 0.3 * minutes)
    common = {
        "variant": "tiny", "size": 128, "batch": 4, "max_objects": 3, "lr": 1e-3,
        "train_bn": True, "seed": seed, "threads": threads, "save_every": 200,
        "log_every": 20, "workers": 0,
    }
    return [
        {**common, "stage": "pretrain", "data": ["synth"], "steps": 100000,
         "time_limit": pre_min},
        {**common, "stage": "main", "data": ["synth"], "steps": 100000,
         "time_limit": max(0.25, minutes - pre_min), "max_skip": (5, 10)},
    ]


def train_demo_model(out_ckpt: str | os.PathLike, *, minutes: float = 4.0, seed: int = 0,
                     threads: int | None = 2, force: bool = False,
                     progress: bool | None = None) -> Path:
    """Train `tiny` on synthetic data for about `minutes` and write its checkpoint.

    Cached: if `out_ckpt` already holds a demo checkpoint of this recipe, minutes and seed, it
    is returned untouched (pass force=True to retrain). The stage folders live beside it in
    `<out_ckpt>.runs/` (pre/, main/ with their log.jsonl).

    Returns:
        Path of the checkpoint (loadable by `mlvos infer` / load_model).
    """
    from mlvos.fileio import atomic_path
    from mlvos.model.checkpoint import read_checkpoint
    from mlvos.model.train.trainer import TrainOptions, train

    out = Path(out_ckpt)
    key = {"recipe": DEMO_RECIPE, "minutes": float(minutes), "seed": int(seed)}
    if out.is_file() and not force:
        try:
            if read_checkpoint(out).get("extra", {}).get("demo") == key:
                return out
        except CheckpointError:
            pass  # unreadable: retrain below
    runs = out.with_name(out.name + ".runs")
    shutil.rmtree(runs, ignore_errors=True)
    previous = None
    for stage in demo_recipe(minutes, seed=seed, threads=threads):
        stage_out = runs / ("pre" if stage["stage"] == "pretrain" else stage["stage"])
        opts = TrainOptions(out=str(stage_out), progress=progress, **stage)
        if previous is not None:
            opts.variant, opts.init = None, str(previous)
        previous = train(opts).checkpoint
    # re-save with the demo key (atomic), so the cache check above can recognise it
    import torch

    state = torch.load(previous, map_location="cpu", weights_only=True)
    train_state = state["extra"].get("train", {})
    # a demo model is for inference: drop the optimizer / RNG state (3x the weights' size)
    state["extra"] = {"demo": key, "train": {k: train_state[k] for k in
                                             ("options", "step", "elapsed_s", "history")
                                             if k in train_state}}
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out
