"""A short, cached CPU recipe that trains the `tiny` variant (for `mlvos demo` and
`mlvos train demo`): pre-training on photo cut-outs simulated into clips, then main training on
natural-looking and synthetic videos, each run stopped by a time limit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlvos.errors import CheckpointError

# Bump when the recipe changes, so cached demo checkpoints are retrained.
DEMO_RECIPE = 13
# Share of the minutes per chained run, and the steps per minute each run makes on a quiet
# 2-core CPU (recipe 12's late-fusion `tiny` made 223 / 169 / 163 in a 4-minute run and
# 229 / 175 / 168 in an 18-minute one; the table is set a little below): the step count is set
# so that the cosine schedule ends within the run's time (STEP_MARGIN below the rate); the time
# limit only stops a run early on a slower or busy machine. Recipe 10's table (100 / 120 / 102,
# measured on a slower day of this VM) left a quarter of a 4-minute budget and 40 % of a
# 60-minute one unused on faster days.
STAGE_SHARES = (0.22, 0.33, 0.45)
STAGE_RATES = (210.0, 160.0, 150.0)
STEP_MARGIN = 0.95


def demo_recipe(minutes: float, *, seed: int = 0, threads: int | None = 2,
                photos: str | None = None) -> list[dict]:
    """Options of the chained runs (TrainOptions fields) for a `minutes`-long CPU run.

    Progressive, natural-looking clips first (`mlvos data synth --style natural`: photo
    backgrounds and cut-outs, no colour shortcut), synthetic ones mixed in at the end:
    1. pretrain: static photo cut-outs simulated into clips (the paper's stage 1), 160x160,
       each rendered clip used for two steps (`reuse`: rendering 4 clips took longer than the
       step);
    2. main: natural videos, 320x320 crops, skips growing 3 -> 10 frames;
    3. main: natural x2 + synthetic 480x854 videos, 448x448 crops, close to full-frame
       inference (the memory read must stay sharp over ~1500 positions per frame).
    The main runs add a soft Dice loss per object to the bootstrapped cross-entropy (recipe 13;
    measured on the natural validation set, 18 minutes: J&F 45.6 -> 53.7, 4 minutes: 40.8 ->
    45.5, README Training).
    All runs read memory through KMN's Gaussian kernel (sigma 2 cells around each memory
    position's best match): measured on the natural validation set it gave +5 J&F over the
    global read, top-k 20 +0.5 at half the speed (README, Memory-read priors).
    Each run stops at its share of `minutes` (time limit) or its step count, whichever first.
    What the measurements on the synthetic validation set led to (README, Training):
    - The `tiny` variant reads memory with STCN's shared keys and L2 affinity. With STM's
      per-object memory keys and dot product, the same recipe stayed near copy-first (J&F 18.4
      vs 17.1): foreground was found but identities collapsed onto one object.
    - Targets are at most 2-3 of the scene's 1-5 objects; the rest are distractors labelled
      background. With every object a target, saliency alone scores well and the network never
      learnt to tell objects apart through the memory (identity accuracy ~chance).
    - Bootstrapped cross-entropy in the main runs: after the easy background, the hard pixels
      are boundaries and identity confusions.
    - BatchNorm: the pre-training (batch 4) trains the statistics; the main runs (batch 1-2)
      re-estimate them on their own data and keep them frozen (bn_calib). Trained with batch
      statistics at batch 1, the network learnt per-frame normalization and lost whole videos at
      inference.
    """
    common = {"variant": None, "lr": 1e-3, "seed": seed, "threads": threads,
              "workers": 1, "save_every": 100, "log_every": 20, "photos": photos, "amp": True,
              "read_kernel": 2.0}
    stages = [
        {**common, "stage": "pretrain", "variant": "tiny", "data": ["natural"],
         "size": 160, "batch": 4, "max_objects": 2, "train_bn": True, "reuse": 2},
        {**common, "stage": "main", "data": ["natural"], "size": 320,
         "batch": 2, "bn_calib": 24, "loss": "bootstrap+dice",
         "max_objects": 2, "max_skip": (3, 10), "schedule": "cosine"},
        {**common, "stage": "main", "data": ["natural", "natural", "synth:480x854"], "size": 448,
         "batch": 1, "bn_calib": 32, "loss": "bootstrap+dice",
         "max_objects": 3, "max_skip": (3, 10), "schedule": "cosine", "lr": 5e-4},
    ]
    for stage, share, rate in zip(stages, STAGE_SHARES, STAGE_RATES, strict=True):
        stage["time_limit"] = share * minutes
        stage["steps"] = max(10, round(STEP_MARGIN * rate * share * minutes))
    return stages


def _demo_key(minutes: float, seed: int, photos: str | None) -> dict:
    return {"recipe": DEMO_RECIPE, "minutes": float(minutes), "seed": int(seed),
            "photos": str(photos) if photos else "default"}


def is_cached_demo_model(ckpt: str | os.PathLike, *, minutes: float = 4.0, seed: int = 0,
                         photos: str | None = None) -> bool:
    """Whether `ckpt` holds a demo checkpoint of this recipe, minutes, seed and photo folder
    (a checkpoint of an older recipe, any other file or none at all: False)."""
    from mlvos.model.checkpoint import read_checkpoint

    path = Path(ckpt)
    if not path.is_file():
        return False
    try:
        return read_checkpoint(path).get("extra", {}).get("demo") == _demo_key(minutes, seed,
                                                                               photos)
    except CheckpointError:
        return False  # unreadable: retrain


def train_demo_model(out_ckpt: str | os.PathLike, *, minutes: float = 4.0, seed: int = 0,
                     threads: int | None = 2, force: bool = False,
                     progress: bool | None = None, photos: str | None = None) -> Path:
    """Train `tiny` with the demo recipe for about `minutes` and write its checkpoint.

    Cached: if `out_ckpt` already holds a demo checkpoint of this recipe, minutes and seed, it
    is returned untouched (pass force=True to retrain). The run folders live beside it in
    `<out_ckpt>.runs/` (1-pretrain/, 2-main/, 3-main/, each with its log.jsonl).

    Returns:
        Path of the checkpoint (loadable by `mlvos infer` / load_model).
    """
    from mlvos.model.checkpoint import read_checkpoint, write_checkpoint_state
    from mlvos.model.train.trainer import TrainOptions, train

    out = Path(out_ckpt)
    key = _demo_key(minutes, seed, photos)
    if not force and is_cached_demo_model(out, minutes=minutes, seed=seed, photos=photos):
        return out
    runs = out.with_name(out.name + ".runs")
    shutil.rmtree(runs, ignore_errors=True)
    previous = None
    for i, stage in enumerate(demo_recipe(minutes, seed=seed, threads=threads, photos=photos), 1):
        opts = TrainOptions(out=str(runs / f"{i}-{stage['stage']}"), progress=progress, **stage)
        if previous is not None:
            opts.variant, opts.init = None, str(previous)
        previous = train(opts).checkpoint
    # re-save with the demo key (atomic, sealed), so the cache check above can recognise it
    state = read_checkpoint(previous)
    train_state = state["extra"].get("train", {})
    # a demo model is for inference: drop the optimizer / RNG state (3x the weights' size)
    state["extra"] = {"demo": key, "train": {k: train_state[k] for k in
                                             ("options", "step", "elapsed_s", "history")
                                             if k in train_state}}
    write_checkpoint_state(out, state)
    return out
