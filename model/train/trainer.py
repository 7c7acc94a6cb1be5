"""The training loop behind `mlvos train`: pre-training, main training and fine-tuning.

One function, `train(options)`, runs a stage:

- model: a fresh variant (`variant`), weights from a previous stage (`init`, weights only), or
  the full state of an interrupted run (`resume`);
- data: `ClipDataset` over a clip source, where every batch is a function of (seed, rank, step);
- Adam + a LambdaLR schedule, cross-entropy over ClipModel's aggregated logits, AMP on CUDA;
- DistributedDataParallel when launched by torchrun; only rank 0 writes;
- checkpoints every `save_every` steps and at the end (atomic `last.pt`), carrying optimizer,
  scheduler, GradScaler, RNG states and the step, so a resumed run continues bit-exactly on CPU
  (with the run's options: a resume may not change what shapes the trajectory, `--steps` included);
- `log.jsonl` (one JSON object per logged step), tqdm progress, optional TensorBoard.

The run's options and the rules for changing them on resume live in options.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlvos.errors import CheckpointError, DatasetError, InputError, MissingDependencyError
from mlvos.model.train import distributed as dist_utils
from mlvos.model.train.options import (
    RESUME_OVERRIDABLE,
    TRAINING_STAGES,
    TrainOptions,
    merge_resume_options,
)

# the options' names are re-exported: callers import TrainOptions together with train from here
__all__ = [
    "LAST", "LOG", "RESUME_OVERRIDABLE", "TRAINING_STAGES", "TRAIN_STATE_VERSION", "TrainOptions",
    "TrainResult", "build_training_source", "merge_resume_options", "resolve_resume", "train",
]

LAST = "last.pt"
LOG = "log.jsonl"
TRAIN_STATE_VERSION = 1

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run did: final checkpoint, steps done (total), why it stopped, last loss."""

    checkpoint: Path
    step: int
    stopped: str  # "steps" | "time-limit" | "stop-after"
    loss: float
    elapsed_s: float
    log: Path
    rank: int = 0
    world_size: int = 1


# ------------------------------------------------------------------------------- helpers


def resolve_resume(path: str) -> Path:
    """A run folder (-> its last.pt) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST
        if not p.is_file():
            # A run killed before its first checkpoint leaves only its log: --force restarts it.
            restart = ("the run stopped before its first checkpoint: start it again with --force "
                       "instead of --resume" if (p.parent / LOG).is_file()
                       else "start a new run without --resume")
            raise CheckpointError(f"--resume {path}: the folder has no {LAST}; nothing to resume "
                                  f"({restart})")
    elif not p.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint file or run folder")
    return p


def _run_files(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted([p for p in out.iterdir()
                   if p.name in (LAST, LOG) or (p.name.startswith("step-") and p.suffix == ".pt")
                   or p.name.startswith("events.out.tfevents")])


def _prepare_out(out: Path, opts: TrainOptions, info) -> None:
    existing = _run_files(out)
    if existing and not opts.resume:
        if not opts.force:
            raise InputError(f"{out} already holds a training run ({existing[0].name}, ...); "
                             f"pass --resume {out} to continue it, --force to replace it, or "
                             "choose another --out")
    dist_utils.barrier(info)  # every rank has checked before rank 0 touches anything
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if existing and opts.force and not opts.resume:
            for p in existing:
                p.unlink()


def _finetune_target(opts: TrainOptions):
    """(image (H, W, 3) uint8, mask (H, W) uint8) of the video to fine-tune on."""
    from mlvos.palette import read_frame, read_mask

    if opts.video:
        from mlvos.model.train.data import resolve_video_frames

        frames = resolve_video_frames(opts.video)
        mask_path = Path(opts.mask)
        by_stem = {p.stem: p for p in frames}
        frame_path = by_stem.get(mask_path.stem, frames[0])
        image, mask = read_frame(frame_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but frame "
                               f"{frame_path} is {image.shape[1]}x{image.shape[0]} (WxH); "
                               "they must match")
        return image, mask
    davis = [d for d in opts.data if d.startswith("davis:")]
    if len(davis) != 1:
        raise InputError("--sequence NAME needs exactly one --data davis:ROOT")
    from mlvos.data.datasets import DavisDataset

    ds = DavisDataset(davis[0].partition(":")[2], split=opts.split or "val", validate=False)
    try:
        seq = ds[opts.sequence]
    except KeyError:
        raise InputError(f"--sequence {opts.sequence!r} is not in {ds.root} (split "
                         f"{ds.split}); available: {', '.join(ds.sequences[:10])}") from None
    return seq.read_frame(0), seq.first_mask()


def build_training_source(opts: TrainOptions):
    """The ClipSource of the stage."""
    from mlvos.model.train.data import build_source

    if opts.stage == "finetune":
        from mlvos.model.train.lucid import LucidSource

        return LucidSource(*_finetune_target(opts))
    return build_source(opts.stage, opts.data, opts.static, split=opts.split,
                        photos=opts.photos)


def _set_bn_training(model: torch.nn.Module, train_bn: bool) -> None:
    if train_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()


def _calibrate_bn(clip_model, dataset, batches: int, device, k: int) -> None:
    """Running BatchNorm statistics := their average over `batches` batches of `dataset`
    (cumulative, forward only); the modules' modes are restored afterwards."""
    from mlvos.model.train.data import first_frame_masks

    bns = [m for m in clip_model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    with torch.no_grad():
        for i in range(batches):
            items = [dataset[i * dataset.batch + j] for j in range(dataset.batch)]
            batch = torch.utils.data.default_collate(items)
            first, valid = first_frame_masks(batch["labels"].to(device),
                                             batch["num_objects"].to(device), k)
            clip_model(batch["frames"].to(device), first, valid)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


class _JsonLog:
    """Appends one JSON object per line; flushed each line so a killed run keeps its log."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.f = open(path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self.f:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def _tensorboard(out: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise MissingDependencyError(
            f"--tensorboard needs the 'tensorboard' package ({e}); pip install tensorboard, "
            "or drop --tensorboard (log.jsonl and `mlvos train plot` need nothing extra)"
        ) from e
    return SummaryWriter(str(out))


# ---------------------------------------------------------------------------------- train


def train(opts: TrainOptions, *, explicit: set[str] | None = None) -> TrainResult:
    """Run one training stage; see the module docstring.

    Args:
        opts: the run's options (validated here).
        explicit: names of the options the user set explicitly (for --resume merging); None
            means all fields that differ from the defaults.

    Returns:
        TrainResult (rank 0's view; other ranks return the same step and loss).

    Raises:
        InputError: inconsistent options, an existing run in `out` without --resume/--force.
        CheckpointError: unreadable --init / --resume checkpoint.
        DatasetError: a dataset problem (the reader names the file).
    """
    from mlvos.model.checkpoint import load_model, read_checkpoint
    from mlvos.model.registry import build_model

    if explicit is None:
        defaults = TrainOptions()
        explicit = {f.name for f in dataclasses.fields(TrainOptions)
                    if getattr(opts, f.name) != getattr(defaults, f.name)}
    state = None
    if opts.resume:
        ckpt_path = resolve_resume(opts.resume)
        state = read_checkpoint(ckpt_path)
        train_state = (state.get("extra") or {}).get("train")
        if not train_state:
            raise CheckpointError(f"{ckpt_path} has no training state (it is a weights-only "
                                  f"checkpoint); use --init {ckpt_path} to start from its weights")
        if not opts.out or "out" not in explicit:
            opts.out = str(ckpt_path.parent)
        opts = merge_resume_options(train_state["options"], opts, explicit)
    opts.validate()

    info = dist_utils.setup(opts.device)
    saved = _global_torch_state()
    try:
        return _train(opts, info, state, load_model, build_model)
    finally:
        _restore_global_torch_state(saved)  # in-process callers (tests, demo) get theirs back
        dist_utils.cleanup(info)


def _global_torch_state() -> tuple:
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.backends.mkldnn.enabled, torch.backends.cudnn.benchmark)


def _restore_global_torch_state(saved: tuple) -> None:
    threads, deterministic, mkldnn, benchmark = saved
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.mkldnn.enabled = mkldnn
    torch.backends.cudnn.benchmark = benchmark


def _train(opts: TrainOptions, info, state, load_model, build_model) -> TrainResult:
    from mlvos.model.checkpoint import load_state_strict
    from mlvos.model.train.clip import ClipModel
    from mlvos.model.train.data import ClipDataset, first_frame_masks, make_loader, max_skip_at
    from mlvos.model.train.losses import clip_loss
    from mlvos.model.train.schedule import make_scheduler
    from mlvos.model.train.state import capture_rng, restore_rng, seed_everything

    out = Path(opts.out)
    cuda = info.device.type == "cuda"
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.mkldnn is not None and not cuda:
        torch.backends.mkldnn.enabled = bool(opts.mkldnn)
    amp = cuda if opts.amp is None else bool(opts.amp)
    if amp and not cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning("--amp: this CPU has no native bfloat16 (AVX512-BF16/AMX); training in "
                       "float32")
        amp = False
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    channels_last = (amp and not cuda) if opts.channels_last is None else opts.channels_last
    if opts.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif cuda:
        torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------ model
    history: list[dict[str, Any]] = []
    if state is not None:
        from mlvos.model.config import ModelConfig

        net = build_model(state["variant"], ModelConfig.from_dict(state["config"]))
        load_state_strict(net, state["model"], source=str(opts.resume))
        history = list(state["extra"]["train"].get("history", []))
        start_step = int(state["extra"]["train"]["step"])
        elapsed_before = float(state["extra"]["train"].get("elapsed_s", 0.0))
        if info.is_main:
            logger.info(f"resuming {opts.resume} at step {start_step} of {opts.steps}")
    else:
        seed_everything(opts.seed)
        if opts.init:
            net, init_state = load_model(opts.init, variant=opts.variant)
            prev = (init_state.get("extra") or {}).get("train") or {}
            history = list(prev.get("history", [])) + [{
                "stage": str(init_state.get("stage", "")),
                "iteration": int(init_state.get("iteration", 0)),
                "checkpoint": str(opts.init),
            }]
        else:
            net = build_model(opts.variant, seed=opts.seed)
        if opts.read_topk is not None or opts.read_kernel is not None:
            from mlvos.model.checkpoint import with_read_options

            # the priors add no weights: a new run trains through them, later stages (--init)
            # and exports inherit them from the checkpoint's config
            net = with_read_options(net, topk=opts.read_topk, kernel=opts.read_kernel)
        start_step, elapsed_before = 0, 0.0

    _prepare_out(out, opts, info)
    source = build_training_source(opts)  # dataset errors surface before any training

    net.to(info.device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    clip_model = ClipModel(net).train()
    _set_bn_training(clip_model, opts.train_bn)
    model: torch.nn.Module = clip_model
    if info.distributed:
        # The memory encoder uses only the stride-16 output, so the last level's finer up-path
        # layers of its backbone get no gradient: DDP must be told to expect unused parameters.
        model = torch.nn.parallel.DistributedDataParallel(
            clip_model, device_ids=[info.local_rank] if cuda else None,
            find_unused_parameters=True)

    optimizer = torch.optim.Adam(clip_model.parameters(), lr=opts.base_lr)
    scheduler = make_scheduler(optimizer, schedule=opts.schedule, warmup=opts.warmup,
                               total=opts.steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)  # bf16 needs no loss scaling
    if state is not None:
        ts = state["extra"]["train"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        if amp and cuda and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        rngs = ts.get("rng") or []
        if rngs:
            restore_rng(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])

    if start_step >= opts.steps:
        # Not "pass a larger --steps": the step total shapes the schedule, the curriculum and
        # the loss ramp of every step, so a finished run is extended by a new run (options.py).
        raise InputError(
            f"the run is finished: it is at step {start_step} of its --steps {opts.steps}, and a "
            "resume cannot change --steps. To train further, start a new run from its weights: "
            f"mlvos train --stage {opts.stage} --init {resolve_resume(opts.resume)} --steps N "
            "--out NEW_DIR with the run's data options (a fresh optimizer and schedule over the "
            "N new steps)")

    lo, hi = opts.max_skip
    total = opts.steps
    skip = functools.partial(max_skip_at, total=total, low=lo, high=hi) \
        if opts.stage == "main" else None  # a partial, not a lambda: workers are spawned
    dataset = ClipDataset(source, seed=opts.seed, rank=info.rank, batch=opts.batch,
                          size=opts.size, max_objects=opts.max_objects, skip=skip,
                          length=opts.steps * opts.batch, reuse=opts.reuse)
    loader = make_loader(dataset, start_step=start_step, total_steps=opts.steps,
                         workers=opts.workers)
    if opts.bn_calib and state is None:
        if opts.train_bn:
            raise InputError("--bn-calib re-estimates frozen BatchNorm statistics; it cannot be "
                             "combined with --train-bn")
        # Its own sample stream (another seed), so the training data is unchanged by it.
        calib = ClipDataset(source, seed=opts.seed + 7919, rank=info.rank, batch=opts.batch,
                            size=opts.size, max_objects=opts.max_objects, skip=skip,
                            length=opts.bn_calib * opts.batch)
        _calibrate_bn(clip_model, calib, opts.bn_calib, info.device, opts.max_objects)

    log = _JsonLog(out / LOG, info.is_main)
    tb = _tensorboard(out, opts.tensorboard and info.is_main)
    if state is not None:
        log.write({"event": "resume", "step": start_step, "time": time.time()})

    def save(step: int, elapsed: float) -> Path:
        rngs = dist_utils.gather_objects(info, capture_rng())
        path = out / LAST
        if info.is_main:
            from mlvos.model.checkpoint import save_checkpoint

            extra = {"train": {
                "version": TRAIN_STATE_VERSION,
                "options": {**opts.to_dict(), "resume": None, "force": False, "stop_after": None},
                "step": step,
                "elapsed_s": elapsed,
                "world_size": info.world_size,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if amp and cuda else {},
                "rng": rngs,
                "history": history,
            }}
            save_checkpoint(path, net, stage=opts.stage, iteration=step, extra=extra)
            if opts.keep_checkpoints:
                save_checkpoint(out / f"step-{step:06d}.pt", net, stage=opts.stage,
                                iteration=step, extra=extra)
        dist_utils.barrier(info)
        return path

    from tqdm import tqdm

    show = info.is_main and (opts.progress if opts.progress is not None
                             else sys.stderr.isatty())
    bar = tqdm(total=opts.steps, initial=start_step, disable=not show, unit="step",
               desc=f"{opts.stage}", dynamic_ncols=True)
    k = opts.max_objects
    t_start = time.perf_counter()
    t_log, n_log, loss_sum = t_start, 0, 0.0
    step, last_loss, stopped = start_step, float("nan"), "steps"
    clips_per_step = opts.batch * info.world_size
    try:
        for batch in loader:
            frames = batch["frames"].to(info.device, non_blocking=True)
            labels = batch["labels"].to(info.device, non_blocking=True)
            first, valid = first_frame_masks(labels, batch["num_objects"].to(info.device), k)
            with torch.autocast(device_type=info.device.type, dtype=amp_dtype, enabled=amp):
                logits = model(frames, first, valid)  # (B, T-1, K+1, H, W)
            loss = clip_loss(logits, labels[:, 1:], kind=opts.loss, step=step, total=opts.steps)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(clip_model.parameters(), opts.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise InputError(f"the loss became {last_loss} at step {step}; lower --lr "
                                 f"(now {opts.base_lr:g}) or use --grad-clip")
            loss_sum += last_loss
            n_log += 1
            elapsed = time.perf_counter() - t_start
            bar.update(1)
            if step % opts.log_every == 0 or step == opts.steps:
                now = time.perf_counter()
                mean_loss = dist_utils.mean(info, loss_sum / n_log)
                rate = n_log * clips_per_step / max(now - t_log, 1e-9)
                record = {"step": step, "loss": last_loss, "loss_avg": mean_loss, "lr": lr,
                          "clips_per_s": rate, "images_per_s": rate * frames.shape[1],
                          "time": elapsed_before + elapsed, "stage": opts.stage,
                          "max_skip": dataset.skip(step - 1) if dataset.skip else 1}
                log.write(record)
                if tb is not None:
                    tb.add_scalar("loss", mean_loss, step)
                    tb.add_scalar("lr", lr, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2g}")
                if not show and info.is_main:
                    logger.info(f"{opts.stage} step {step}/{opts.steps} loss {mean_loss:.4f} "
                                f"lr {lr:.3g} {rate * frames.shape[1]:.1f} img/s "
                                f"{elapsed_before + elapsed:.0f}s")
                t_log, n_log, loss_sum = now, 0, 0.0
            stop = None
            if opts.stop_after is not None and step - start_step >= opts.stop_after:
                stop = "stop-after"
            elif opts.time_limit is not None:
                per_step = elapsed / (step - start_step)
                if elapsed + per_step >= opts.time_limit * 60.0:
                    stop = "time-limit"
            if dist_utils.any_true(info, stop is not None):
                stopped = stop or "time-limit"
                break
            if step % opts.save_every == 0 and step < opts.steps:
                save(step, elapsed_before + elapsed)
    finally:
        bar.close()
        log.close()
        if tb is not None:
            tb.close()
    elapsed = elapsed_before + time.perf_counter() - t_start
    path = save(step, elapsed)
    if info.is_main:
        with open(out / LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": "end", "step": step, "stopped": stopped,
                                "time": elapsed}) + "\n")
    return TrainResult(path, step, stopped, last_loss, elapsed, out / LOG, info.rank,
                       info.world_size)
