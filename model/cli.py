"""The model package's subcommands: `mlvos train`, `mlvos infer`, `mlvos model info|init`.

Only argparse and light constants are imported here; torch and the training code are imported
inside the commands, so `mlvos <command> --help` is instant and works without torch.
"""

from __future__ import annotations

import argparse

from mlvos.model.config import add_read_prior_arguments

# The `mlvos train --help` description.
TRAIN_DESCRIPTION = """\
`mlvos train`: pre-training, main training, fine-tuning; `mlvos train plot`: loss curves.

    mlvos train --stage pretrain --variant tiny --out runs/pre [--static IMGS:MASKS] ...
    mlvos train --stage main --init runs/pre/last.pt --out runs/main --data synth ...
    mlvos train --stage finetune --init runs/main/last.pt --out runs/ft \\
                --video DAVIS/JPEGImages/480p/bear --mask DAVIS/Annotations/480p/bear/00000.png
    mlvos train --resume runs/main [--time-limit MIN] [--stop-after N]   (same options)
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

READ_PRIORS_NOTE = """\
Memory-read priors against look-alike objects (ModelConfig; off in every variant; no parameters,
so `mlvos infer` and `mlvos export` set them on any checkpoint: --read-topk K --read-kernel SIGMA):
  top-k (STCN; read_topk=K): each query position reads only its K most similar memory positions,
    so many weak matches (a look-alike instance elsewhere in the frame) cannot add up to one
    strong one. Cost: a TopK over the T*h*w memory positions of every query position, and a
    compare and select on the affinity matrix.
  kernel (KMN, Seong et al. 2020; read_kernel=SIGMA): every memory position finds the query
    position it matches best and lends its weight mainly within a Gaussian of SIGMA feature cells
    (stride 16) around it, so a look-alike object away from the target gets little of the
    target's memory. Cost: an ArgMax over the affinity matrix and two elementwise passes on it.
  With either, TensorRT cannot fuse the read's attention (manifest: attention_fusable false)."""


def register_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model variants: sizes, costs, untrained checkpoints")
    msub = p.add_subparsers(dest="model_command", metavar="<model-command>")

    info = msub.add_parser("info", help="parameters and GMACs per stage for each variant")
    info.add_argument("--variant", nargs="*", default=None, help="variants (default: all)")
    info.add_argument("--height", type=int, default=480, help="frame height (default 480)")
    info.add_argument("--width", type=int, default=864, help="frame width (default 864)")
    info.add_argument("--capacity", type=int, default=None, help="memory slots for the read cost")
    info.add_argument("--objects", type=int, default=1, help="objects for the per-frame total")
    info.set_defaults(func=main_info)

    init = msub.add_parser(
        "init", help="write a seeded, untrained (or ImageNet-initialized) checkpoint"
    )
    init.add_argument("--variant", required=True, help="registry name: tiny, paper or stm-r50")
    init.add_argument("--out", required=True, help="checkpoint path to write")
    init.add_argument("--seed", type=int, default=0,
                      help="seed of the random initialization (default 0)")
    init.add_argument(
        "--imagenet-weights",
        default=None,
        metavar="PATH",
        help="a torchvision ResNet ImageNet state dict you downloaded; loaded into every backbone",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    init.set_defaults(func=main_init)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def main_info(args: argparse.Namespace) -> int:
    from mlvos.model.flops import stage_costs
    from mlvos.model.registry import get_config, variants
    from mlvos.runtime.spec import DEFAULT_CAPACITY

    names = args.variant or variants()
    for v in names:
        get_config(v)  # unknown names fail before any work
    cap = args.capacity or DEFAULT_CAPACITY
    print(
        f"GMACs at {args.height}x{args.width} (padded to the stride); memory stage of one object "
        "(a late-fusion encoder encodes the frame once, further objects add its mask path); "
        f"read+decode of one object over {cap} memory frames (further objects share its "
        "affinity and the skip convolutions); "
        f"frame total with {args.objects} object(s)"
    )
    header = (
        f"{'variant':<10} {'params (M)':>10} {'stride':>6} {'padded':>9} {'query':>8} "
        f"{'memory':>8} {'read+dec':>9} {'frame':>8}"
    )
    print(header)
    print("-" * len(header))
    for v in names:
        c = stage_costs(v, args.height, args.width, cap)
        print(
            f"{v:<10} {c.params_m:>10.2f} {c.stride:>6} {f'{c.height}x{c.width}':>9} "
            f"{c.query_gmac:>8.1f} {c.memory_write_gmac(1):>8.1f} {c.read_gmac(1):>9.1f} "
            f"{c.per_frame(args.objects):>8.1f}"
        )
    print()
    print(READ_PRIORS_NOTE)
    return 0


def main_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlvos.errors import InputError
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.pretrained import load_imagenet_weights
    from mlvos.model.registry import build_model

    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out} already exists; pass --force to overwrite it")
    model = build_model(args.variant, seed=args.seed)
    stage = "init"
    if args.imagenet_weights:
        n = load_imagenet_weights(model, args.imagenet_weights)
        stage = "imagenet"
        print(f"loaded {n} ImageNet tensors from {args.imagenet_weights}")
    save_checkpoint(out, model, stage=stage, iteration=0, extra={"seed": args.seed})
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} (variant {args.variant}, {n / 1e6:.2f} M parameters, seed {args.seed})")
    return 0


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


def register_train(sub: argparse._SubParsersAction) -> None:
    from mlvos.model.registry import variants

    p = sub.add_parser(
        "train",
        help="train a stage (pretrain / main / finetune), resumable, DDP via torchrun",
        description=TRAIN_DESCRIPTION,
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
                   "position) with its own options; only runtime options (--time-limit, "
                   "--stop-after, --save-every, --log-every, --workers, --threads, ...) may change")
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
    o.add_argument("--loss", choices=("ce", "bootstrap", "bootstrap+dice"), default=_S,
                   help="ce: cross-entropy over all pixels (default, paper); bootstrap: over "
                   "the hardest 15%% of pixels after a ramp (faster from scratch); "
                   "bootstrap+dice: plus a soft Dice loss per object (small objects count)")
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
    p.set_defaults(func=main_train)

    psub = p.add_subparsers(dest="train_command", metavar="[plot | demo]")
    pl = psub.add_parser("plot", help="draw loss vs step from a log.jsonl into a PNG")
    pl.add_argument("log", help="a run's log.jsonl (or the run folder)")
    pl.add_argument("--out", required=True, metavar="PNG", help="image to write")
    pl.add_argument("--smoothing", type=float, default=0.9, help="EMA weight in [0, 1)")
    pl.set_defaults(func=main_train_plot)
    dm = psub.add_parser("demo", help="train the tiny demo model on synthetic data (cached)")
    dm.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    dm.add_argument("--minutes", type=float, default=4.0, help="training time (default 4)")
    dm.add_argument("--seed", type=int, default=0, help="seed of the recipe's runs (default 0)")
    dm.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    dm.add_argument("--force", action="store_true", help="retrain even if --out is cached")
    dm.add_argument("--photos", default=None, metavar="DIR",
                    help="photographs for the natural clips (default: $MLVOS_PHOTOS or "
                    "~/.cache/mlvos/photos, installed on first use)")
    dm.set_defaults(func=main_train_demo)


def main_train(args: argparse.Namespace) -> int:
    import dataclasses

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


def main_train_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlvos.model.train.plot import plot_log

    log = Path(args.log)
    if log.is_dir():
        log = log / "log.jsonl"
    out = plot_log(log, args.out, smoothing=args.smoothing)
    print(f"wrote {out}")
    return 0


def main_train_demo(args: argparse.Namespace) -> int:
    import time

    from mlvos.model.train.demo import train_demo_model

    t0 = time.perf_counter()
    out = train_demo_model(args.out, minutes=args.minutes, seed=args.seed, threads=args.threads,
                           force=args.force, photos=args.photos)
    print(f"demo model {out} ready ({time.perf_counter() - t0:.0f} s)")
    return 0


def register_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="PyTorch reference propagation over a DAVIS-layout dataset, writing palette PNGs",
        description="Several --checkpoint files form the paper's ensemble (the models' "
        "soft-aggregated object probabilities are averaged; each model keeps its own memory).",
    )
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints")
    p.add_argument(
        "--data", required=True, help="DAVIS-layout root (JPEGImages/480p, Annotations/480p)"
    )
    p.add_argument("--out", required=True, help="output folder of sequence folders of PNGs")
    p.add_argument(
        "--sequences", nargs="*", default=None, help="subset of sequences (default: all)"
    )
    p.add_argument("--resolution", default="480p",
                   help="DAVIS resolution folder of --data (default 480p)")
    p.add_argument("--capacity", type=int, default=None, help="memory slots (default from spec)")
    p.add_argument("--mem-every", type=int, default=None, metavar="N",
                   help="permanent memory period (default: the model's, 5)")
    p.add_argument("--prev-every", type=int, default=None, metavar="N",
                   help="refresh the previous-frame slot every N-th frame (default: the model's; "
                   "see `mlvos run --help`)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    add_read_prior_arguments(p)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=main_infer)


def main_infer(args: argparse.Namespace) -> int:
    from mlvos.errors import InputError
    from mlvos.model.infer import infer_dataset
    from mlvos.runtime.spec import DEFAULT_CAPACITY

    capacity = args.capacity or DEFAULT_CAPACITY
    if capacity < 2:
        raise InputError(f"--capacity must be >= 2 (annotated + previous frame), got {capacity}")
    result = infer_dataset(
        checkpoints=args.checkpoint, data=args.data, out=args.out, sequences=args.sequences,
        resolution=args.resolution, capacity=capacity,
        mem_every=args.mem_every, prev_every=args.prev_every, device=args.device,
        read_topk=args.read_topk, read_kernel=args.read_kernel, force=args.force,
    )
    print(
        f"wrote {result.frames} masks for {result.sequences} sequences to {args.out} "
        f"({result.frames / result.seconds:.1f} FPS)"
    )
    return 0


# name -> register function; mlvos.cli adds them to `mlvos` in pipeline order.
SUBCOMMANDS = {"train": register_train, "infer": register_infer, "model": register_model}
