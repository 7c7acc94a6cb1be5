"""`mlvos train`: pre-training, main training, fine-tuning; `mlvos train plot`: loss curves.

    mlvos train --stage pretrain --variant tiny --out runs/pre [--static IMGS:MASKS] ...
    mlvos train --stage main --init runs/pre/last.pt --out runs/main --data synth ...
    mlvos train --stage finetune --init runs/main/last.pt --out runs/ft \\
                --video DAVIS/JPEGImages/480p/bear --mask DAVIS/Annotations/480p/bear/00000.png
    mlvos train --resume runs/main [--steps N] [--time-limit MIN]
    torchrun --nproc_per_node 4 -m mlvos.cli train --stage main ...       (DDP, NCCL on CUDA)
    mlvos train plot runs/main/log.jsonl --out loss.png
    mlvos train demo --out .cache/demo/tiny.pt [--minutes 4]     (cached tiny demo model)

Data: --data synth (procedural videos rendered at --size) | synth:HxW (rendered at HxW, then
cropped) | natural (photographic backgrounds and cut-outs, --photos DIR) | davis:ROOT |
ytvos:ROOT (repeatable, mixed uniformly). Pre-training simulates clips from static images
(--static IMAGES:MASKS, repeatable), from natural frames (--data natural) or, without them,
from synthetic frames.
The learning rate defaults to the paper's (1e-5 pre-training, 5e-6 main / fine-tuning); a CPU
run from scratch needs an explicit larger --lr such as 1e-3.
"""

from __future__ import annotations

import argparse

_S = argparse.SUPPRESS  # unset options stay absent, so --resume knows what was given


def _max_skip(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 5,25, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 5,25, got {text!r}")
    return parts[0], parts[1]


def register(sub: argparse._SubParsersAction) -> None:
    from mlvos.model.registry import variants

    p = sub.add_parser(
        "train",
        help="train a stage (pretrain / main / finetune), resumable, DDP via torchrun",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--stage", choices=("pretrain", "main", "finetune"), default=_S,
                   help="training stage (default: main)")
    g.add_argument("--out", default=_S, metavar="DIR",
                   help="run folder: last.pt, log.jsonl (default with --resume: its folder)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--variant", choices=variants(), default=_S, help="start a new model")
    src.add_argument("--init", default=_S, metavar="CKPT",
                     help="start from a previous stage's weights (variant from the checkpoint)")
    g.add_argument("--resume", default=_S, metavar="DIR_OR_CKPT",
                   help="continue an interrupted run exactly (model, optimizer, RNG, data "
                   "position)")
    g.add_argument("--force", action="store_true", default=_S,
                   help="replace a previous run in --out")
    g.add_argument("--read-topk", type=int, default=_S, metavar="K",
                   help="train through STCN's top-k memory read (ModelConfig.read_topk)")
    g.add_argument("--read-kernel", type=float, default=_S, metavar="SIGMA",
                   help="train through KMN's Gaussian read kernel (ModelConfig.read_kernel, "
                   "sigma in stride-16 feature cells)")

    d = p.add_argument_group("data")
    d.add_argument("--data", action="append", default=_S, metavar="SPEC",
                   help="synth | synth:HxW | davis:ROOT | ytvos:ROOT (repeatable; default synth)")
    d.add_argument("--static", action="append", default=_S, metavar="IMAGES:MASKS",
                   help="static image + mask folders for pre-training (repeatable)")
    d.add_argument("--photos", default=_S, metavar="DIR",
                   help="photographs for --data natural: an `mlvos data photos` folder or any "
                   "folder of images (default: $MLVOS_PHOTOS or ~/.cache/mlvos/photos, "
                   "installed from Debian packages on first use)")
    d.add_argument("--split", default=_S, help="dataset split (default: train; finetune: val)")
    d.add_argument("--video", default=_S, metavar="DIR", help="finetune: folder of frames")
    d.add_argument("--mask", default=_S, metavar="PNG", help="finetune: first-frame mask")
    d.add_argument("--sequence", default=_S, help="finetune: DAVIS sequence (with --data davis:)")
    d.add_argument("--size", type=int, default=_S, help="square crop side (default 384, paper)")
    d.add_argument("--max-objects", type=int, default=_S, help="objects per clip (default 3)")
    d.add_argument("--max-skip", type=_max_skip, default=_S, metavar="LOW,HIGH",
                   help="main-training max-skip curriculum (default 5,25)")
    d.add_argument("--workers", type=int, default=_S, help="DataLoader workers (default 0)")
    d.add_argument("--reuse", type=int, default=_S, metavar="N",
                   help="steps each rendered clip serves: once as drawn, then varied by flip, "
                   "time reversal, zoom and photometric jitter (default 1 = fresh clips; 2 "
                   "halves the rendering cost of natural clips)")

    o = p.add_argument_group("optimization")
    o.add_argument("--steps", type=int, default=_S, help="total steps of the stage (default 10000)")
    o.add_argument("--batch", type=int, default=_S, help="clips per process per step (default 4)")
    o.add_argument("--lr", type=float, default=_S,
                   help="Adam lr (default: paper, 1e-5 pretrain, 5e-6 main/finetune)")
    o.add_argument("--schedule", choices=("constant", "cosine"), default=_S,
                   help="lr schedule after warm-up (default constant, as the paper)")
    o.add_argument("--warmup", type=int, default=_S, help="linear warm-up steps (default 0)")
    o.add_argument("--grad-clip", type=float, default=_S, help="max grad norm (default 0 = off)")
    o.add_argument("--loss", choices=("ce", "bootstrap"), default=_S,
                   help="ce: cross-entropy over all pixels (default, paper); bootstrap: over "
                   "the hardest 15%% of pixels after a ramp (faster from scratch)")
    o.add_argument("--train-bn", action="store_true", default=_S,
                   help="update BatchNorm statistics (training from scratch); default frozen")
    o.add_argument("--bn-calib", type=int, default=_S, metavar="BATCHES",
                   help="re-estimate the frozen BatchNorm statistics on this many batches of "
                   "the run's data before training (fresh runs; default 0 = off)")
    o.add_argument("--seed", type=int, default=_S, help="run seed (default 0)")
    o.add_argument("--amp", action=argparse.BooleanOptionalAction, default=_S,
                   help="mixed precision: fp16 on CUDA, bf16 on CPUs with native bf16 "
                   "(AVX512-BF16/AMX; fp32 elsewhere) (default: on with CUDA only)")
    o.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=_S,
                   help="NHWC memory format (default: on with CPU amp)")

    r = p.add_argument_group("runtime")
    r.add_argument("--time-limit", type=float, default=_S, metavar="MIN",
                   help="stop cleanly (and checkpoint) after this many minutes")
    r.add_argument("--stop-after", type=int, default=_S, metavar="N",
                   help="stop cleanly after N steps of this invocation")
    r.add_argument("--save-every", type=int, default=_S, help="checkpoint period (default 500)")
    r.add_argument("--keep-checkpoints", action="store_true", default=_S,
                   help="also keep step-NNNNNN.pt at every save")
    r.add_argument("--log-every", type=int, default=_S, help="log.jsonl period (default 10)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default=_S,
                   help="default auto (CUDA if available)")
    r.add_argument("--threads", type=int, default=_S, help="torch CPU threads")
    r.add_argument("--mkldnn", action=argparse.BooleanOptionalAction, default=_S,
                   help="oneDNN CPU convolutions (default: torch's, on)")
    r.add_argument("--deterministic", action="store_true", default=_S,
                   help="torch.use_deterministic_algorithms (bit-exact resumes)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=_S,
                   help="tqdm bar (default: when stderr is a terminal)")
    r.add_argument("--tensorboard", action="store_true", default=_S,
                   help="also write TensorBoard events (needs tensorboard)")
    p.set_defaults(func=main)

    psub = p.add_subparsers(dest="train_command", metavar="[plot | demo]")
    pl = psub.add_parser("plot", help="draw loss vs step from a log.jsonl into a PNG")
    pl.add_argument("log", help="a run's log.jsonl (or the run folder)")
    pl.add_argument("--out", required=True, metavar="PNG", help="image to write")
    pl.add_argument("--smoothing", type=float, default=0.9, help="EMA weight in [0, 1)")
    pl.set_defaults(func=main_plot)
    dm = psub.add_parser("demo", help="train the tiny demo model on synthetic data (cached)")
    dm.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    dm.add_argument("--minutes", type=float, default=4.0, help="training time (default 4)")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    dm.add_argument("--force", action="store_true", help="retrain even if --out is cached")
    dm.add_argument("--photos", default=None, metavar="DIR",
                    help="photographs for the natural clips (default: $MLVOS_PHOTOS or "
                    "~/.cache/mlvos/photos, installed on first use)")
    dm.set_defaults(func=main_demo)


def main(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    # Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads made
    # 2-thread training ~4x slower than 1 thread (measured on a loaded 2-core machine).
    # Effective only before torch is first imported; an explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from mlvos.model.train.trainer import TrainOptions, train

    names = {f.name for f in dataclasses.fields(TrainOptions)}
    given = {k: v for k, v in vars(args).items() if k in names}
    opts = TrainOptions(**given)
    result = train(opts, explicit=set(given))
    if result.rank != 0:
        print(f"rank {result.rank}/{result.world_size} finished step {result.step} "
              f"({result.stopped}); rank 0 writes the checkpoint and log")
        return 0
    print(f"{'stopped at' if result.stopped != 'steps' else 'finished'} step {result.step} "
          f"({result.stopped}), loss {result.loss:.4f}, {result.elapsed_s / 60:.1f} min; "
          f"wrote {result.checkpoint} and {result.log}")
    return 0


def main_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlvos.model.train.plot import plot_log

    log = Path(args.log)
    if log.is_dir():
        log = log / "log.jsonl"
    out = plot_log(log, args.out, smoothing=args.smoothing)
    print(f"wrote {out}")
    return 0


def main_demo(args: argparse.Namespace) -> int:
    import time

    from mlvos.model.train.demo import train_demo_model

    t0 = time.perf_counter()
    out = train_demo_model(args.out, minutes=args.minutes, seed=args.seed, threads=args.threads,
                           force=args.force, photos=args.photos)
    print(f"demo model {out} ready ({time.perf_counter() - t0:.0f} s)")
    return 0


def run(argv: list[str] | None = None) -> int:
    """`mlvos train ARGV` as a function (also `python -m mlvos.model.train_cli ARGV`, which
    torchrun can launch with `-m`); errors print like the `mlvos` entry point's."""
    import sys

    from mlvos.errors import MlvosError

    parser = argparse.ArgumentParser(prog="mlvos")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except MlvosError as e:
        print(f"mlvos train: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    import sys

    sys.exit(run())
