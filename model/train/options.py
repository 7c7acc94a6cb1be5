"""What defines a training run: `TrainOptions` (stored in every checkpoint of the run), its
validation, and the rules for the options a resumed run may change (`merge_resume_options`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mlvos.errors import CheckpointError, InputError
from mlvos.model.train.losses import LOSSES
from mlvos.model.train.schedule import PAPER_LR, SCHEDULES
from mlvos.runtime.spec import MIN_SIDE

TRAINING_STAGES = ("pretrain", "main", "finetune")

# Options a resumed run may change: none of them alters the run's trajectory (its batches,
# learning rates, losses and weights step by step); every other option comes from the checkpoint.
# - time_limit / stop_after: only when this invocation stops; the next resume continues the run.
# - save_every / keep_checkpoints / out: where and how often the state is written. Saving reads
#   the RNG states, it draws nothing.
# - log_every / progress / tensorboard: reporting only.
# - workers: every batch is a function of (seed, rank, step) (data.py), whatever the worker count.
# - threads: how CPU kernels split their work. It changes no option of the run; like resuming on
#   another machine, it can change float rounding in the last bits, so a bit-exact resume also
#   needs the same thread count, device and library versions.
# `steps` is not here: the step total shapes the cosine schedule, the max-skip curriculum and the
# bootstrap loss ramp at every step, so a resume with another --steps would be neither the old
# run nor a fresh one. A finished run is extended by a new run initialised from its weights
# (`--init RUN/last.pt --steps N --out NEW`: fresh optimizer and schedule).
RESUME_OVERRIDABLE = ("time_limit", "stop_after", "save_every", "keep_checkpoints", "workers",
                      "log_every", "progress", "tensorboard", "threads", "out")


@dataclass
class TrainOptions:
    """Everything that defines a training run (stored in its checkpoints).

    Attributes:
        stage: "pretrain" | "main" | "finetune".
        out: output folder (checkpoints, log.jsonl).
        variant / init / resume: exactly one model source (resume may come alone).
        data: --data specs ('synth', 'synth:HxW', 'natural', 'davis:ROOT', 'ytvos:ROOT').
        static: --static 'IMAGES:MASKS' folders (pre-training).
        photos: photo folder of --data natural (None: the default folder, installed from
            Debian packages on first use; see mlvos.data.photos).
        read_topk / read_kernel: memory-read priors to train through (ModelConfig.read_topk /
            read_kernel; None keeps the model's), stored in the checkpoint's config.
        split: dataset split for davis/ytvos (default 'train').
        video / mask / sequence: fine-tuning target (frames folder + first mask, or a DAVIS
            sequence name with --data davis:ROOT).
        size: square crop side (paper 384); batch: clips per process per step (paper 4).
        max_objects: object slots K per clip (3); max_skip: (low, high) curriculum of main
            training.
        steps: total optimizer steps of the stage (fixed for the run: it shapes the schedule,
            the max-skip curriculum and the bootstrap ramp); time_limit: minutes of this
            invocation before a clean stop; stop_after: stop after this many steps of this
            invocation.
        lr: Adam learning rate (None = the paper's per stage); schedule / warmup: see
            schedule.py; grad_clip: max gradient norm (0 = off).
        loss: "ce" (plain cross-entropy over all pixels, the paper's), "bootstrap"
            (cross-entropy over the hardest pixels, see losses.py; faster from scratch) or
            "bootstrap+dice" (plus a per-object soft Dice loss).
        train_bn: let BatchNorm statistics update (training from scratch); default keeps them
            frozen as STM does when the model config says so.
        bn_calib: before the first step of a fresh run with frozen statistics, re-estimate
            them over this many batches of the run's own data (forward only). Batch-statistics
            training at batch 1-4 teaches the network per-batch normalization that the running
            averages do not reproduce at inference; a frozen, recalibrated run trains exactly
            as it will be evaluated. 0 = off.
        workers: DataLoader worker processes; seed: run seed.
        reuse: steps each rendered clip serves (1 = fresh clips; 2 = every clip once as drawn
            and once varied by flip/reversal/zoom/photometric; ClipDataset).
        save_every: checkpoint period in steps; keep_checkpoints: also keep step-NNNNNN.pt.
        amp: mixed precision: float16 autocast + GradScaler on CUDA, bfloat16 autocast on a CPU
            whose oneDNN has native bf16 (AVX512-BF16 / AMX; elsewhere bf16 is emulated and
            slower, so amp falls back to fp32 with a message). None = on with CUDA only.
        channels_last: NHWC weights and activations (None = on when amp runs on the CPU, where
            oneDNN's bf16 convolutions are fastest in that layout).
        deterministic: torch.use_deterministic_algorithms (resume tests).
        threads: torch CPU threads (None = torch's default).
        mkldnn: use oneDNN convolutions on CPU (None = torch's default, on).
        device: "auto" | "cpu" | "cuda".
        log_every: log.jsonl / console period; progress: tqdm bar (None = if a terminal).
        tensorboard: also write TensorBoard events (needs the tensorboard package).
        force: replace a previous run in `out`.
    """

    stage: str = "main"
    out: str = ""
    variant: str | None = None
    init: str | None = None
    resume: str | None = None
    data: list[str] = field(default_factory=list)
    static: list[str] = field(default_factory=list)
    photos: str | None = None
    split: str | None = None
    read_topk: int | None = None
    read_kernel: float | None = None
    video: str | None = None
    mask: str | None = None
    sequence: str | None = None
    size: int = 384
    batch: int = 4
    max_objects: int = 3
    max_skip: tuple[int, int] = (5, 25)
    steps: int = 10000
    time_limit: float | None = None
    stop_after: int | None = None
    lr: float | None = None
    schedule: str = "constant"
    warmup: int = 0
    grad_clip: float = 0.0
    loss: str = "ce"
    train_bn: bool = False
    bn_calib: int = 0
    workers: int = 0
    reuse: int = 1
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: bool = False
    amp: bool | None = None
    channels_last: bool | None = None
    deterministic: bool = False
    threads: int | None = None
    mkldnn: bool | None = None
    device: str = "auto"
    log_every: int = 10
    progress: bool | None = None
    tensorboard: bool = False
    force: bool = False

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else PAPER_LR[self.stage]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_skip"] = list(self.max_skip)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"training options in the checkpoint have unknown keys "
                                  f"{unknown}; it was written by another mlvos version")
        d = dict(d)
        if "max_skip" in d:
            d["max_skip"] = tuple(d["max_skip"])
        return cls(**d)

    def validate(self) -> None:
        """Raises InputError on inconsistent options (before any work or file is touched)."""
        if self.stage not in TRAINING_STAGES:
            raise InputError(f"--stage must be one of {TRAINING_STAGES}, received {self.stage!r}")
        if not self.out:
            raise InputError("--out is required (the folder for checkpoints and log.jsonl)")
        if not self.resume and bool(self.variant) == bool(self.init):
            raise InputError("give exactly one of --variant V (new model) or --init CKPT "
                             "(weights of a previous stage), or --resume a run")
        positive = {"size": self.size, "batch": self.batch, "max_objects": self.max_objects,
                    "steps": self.steps, "save_every": self.save_every, "reuse": self.reuse,
                    "log_every": self.log_every}
        for name, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, "
                                 f"received {v!r}")
        if self.size < MIN_SIDE:
            raise InputError(f"--size must be >= {MIN_SIDE} (the network stride is up to 32), "
                             f"received {self.size}")
        lo, hi = self.max_skip
        if lo < 1 or hi < lo:
            raise InputError(f"--max-skip needs 1 <= LOW <= HIGH, received {lo},{hi}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, received {self.lr}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {LOSSES}, received {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule must be one of {SCHEDULES}, received {self.schedule!r}")
        if self.warmup < 0 or self.workers < 0 or self.grad_clip < 0:
            raise InputError("--warmup, --workers and --grad-clip must be >= 0")
        if self.time_limit is not None and self.time_limit <= 0:
            raise InputError(f"--time-limit is in minutes and must be > 0, received "
                             f"{self.time_limit}")
        if self.stop_after is not None and self.stop_after < 1:
            raise InputError(f"--stop-after must be >= 1, received {self.stop_after}")
        if self.stage == "finetune":
            if not (self.video or self.sequence):
                raise InputError("--stage finetune needs --video FRAMES_DIR --mask FIRST.png, "
                                 "or --data davis:ROOT --sequence NAME")
            if self.video and not self.mask:
                raise InputError("--video needs --mask FIRST.png (the first frame's annotation)")
            if self.static:
                raise InputError("--static is for --stage pretrain")
        elif self.video or self.mask or self.sequence:
            raise InputError("--video / --mask / --sequence are for --stage finetune")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "(none)"
    return "(unset)" if value is None else str(value)


def merge_resume_options(stored: dict[str, Any], given: TrainOptions,
                         explicit: set[str]) -> TrainOptions:
    """Options of a resumed run: the checkpoint's, with the explicitly given overridable ones.

    An explicitly given option equal to the stored one is accepted (repeating the original
    command line with --resume works).

    Raises:
        InputError: options that alter the run's trajectory (steps, data, model, lr, ...) differ
            from the checkpoint's; the message lists each with its stored and given value.
    """
    opts = TrainOptions.from_dict(stored)
    changing = sorted(k for k in explicit - set(RESUME_OVERRIDABLE) - {"resume", "force"}
                      if getattr(given, k) != getattr(opts, k))
    if changing:
        listed = "; ".join(f"{_flag(k)} {_shown(getattr(given, k))} (the run has "
                           f"{_shown(getattr(opts, k))})" for k in changing)
        raise InputError(
            f"--resume {given.resume}: {listed}. These options define the run's trajectory "
            "(schedule, curriculum, data, model), so a resumed run keeps the checkpoint's: drop "
            "them to continue the run exactly. To train on with other options (a larger --steps "
            "included), start a new run from its weights: --init CHECKPOINT --out NEW_DIR (a "
            "fresh optimizer and schedule). A resume may change only "
            + ", ".join(_flag(k) for k in RESUME_OVERRIDABLE))
    for k in explicit & set(RESUME_OVERRIDABLE):
        setattr(opts, k, getattr(given, k))
    opts.resume = given.resume
    return opts
