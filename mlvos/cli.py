"""`mlvos` command line: the entry point, and the root package's own subcommands (`demo`, `env`).

Every package has one CLI module, `<package>/cli.py`, whose `SUBCOMMANDS` maps each subcommand
name to a `register(subparsers)` function that adds its parser and sets
`func=<main(args) -> int>`. `COMMANDS` below says which module registers each subcommand, in
pipeline order (the order of `mlvos --help`). CLI modules import only argparse and light constants
at module level and do heavy imports (torch, onnx, ...) inside their `main` functions, so
`mlvos <anything> --help` is instant and works without optional dependencies.

Output: library code reports progress through `logging` loggers named after its modules
(mlvos.export.api, ...; see mlvos.logs), never print callbacks. `main` configures them once
(mlvos.logs.configure_logging): INFO lines to stdout, warnings to stderr, bare messages; tqdm
progress bars are unaffected. A library user who configures nothing sees the warnings only
(Python's last-resort handler), the standard library's behaviour.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mlvos import __version__
from mlvos.errors import MlvosError
from mlvos.logs import configure_logging

# name -> CLI module that registers it (in its SUBCOMMANDS), in pipeline order = `mlvos --help`.
COMMANDS: dict[str, str] = {
    "data": "mlvos.data.cli",
    "train": "mlvos.model.cli",
    "infer": "mlvos.model.cli",
    "eval": "mlvos.data.cli",
    "model": "mlvos.model.cli",
    "export": "mlvos.export.cli",
    "calib": "mlvos.calib.cli",
    "engine": "mlvos.runtime.cli",
    "run": "mlvos.runtime.cli",
    "profile": "mlvos.profiling.cli",
    "check": "mlvos.profiling.cli",
    "benchmark": "mlvos.profiling.cli",
    "demo": "mlvos.cli",
    "env": "mlvos.cli",
}


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="natural + synthetic videos -> train tiny -> export -> ORT -> J&F"
    )
    p.add_argument("--cache", default=".cache/demo", help="cache folder (data, checkpoint, export)")
    p.add_argument("--sequences", type=int, default=3,
                   help="synthetic validation videos (3; the natural set has --natural)")
    p.add_argument("--natural", type=int, default=12,
                   help="natural validation videos (12: the standard natural validation set of "
                   "`make natural-val`)")
    p.add_argument("--natural-frames", type=int, default=40,
                   help="frames per natural validation video (40, as the standard set)")
    p.add_argument("--frames", type=int, default=25, help="frames per synthetic video (25)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the synthetic videos (2026)")
    p.add_argument("--natural-seed", type=int, default=2027,
                   help="seed of the natural videos (2027, the standard natural validation set)")
    p.add_argument("--photos", default=None, metavar="DIR",
                   help="photo folder (default: $MLVOS_PHOTOS or ~/.cache/mlvos/photos, "
                   "installed on first use); training uses its train split, the natural "
                   "validation videos its val split")
    p.add_argument("--train-minutes", type=float, default=4.0, help="training budget (first run)")
    p.add_argument("--retrain", action="store_true", help="ignore the cached checkpoint")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime")
    p.set_defaults(func=main_demo)


def main_demo(args: argparse.Namespace) -> int:
    from mlvos.demo import run_demo

    passed = run_demo(cache=args.cache, sequences=args.sequences, natural=args.natural,
                      frames=args.frames, natural_frames=args.natural_frames, seed=args.seed,
                      natural_seed=args.natural_seed,
                      photos=args.photos, train_minutes=args.train_minutes,
                      retrain=args.retrain, threads=args.threads)
    return 0 if passed else 1


def register_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env", help="print versions of python, numpy, torch, onnx, ORT, TensorRT, GPU"
    )
    p.set_defaults(func=main_env)


def main_env(args: argparse.Namespace) -> int:
    from mlvos.envinfo import collect

    for k, v in collect().items():
        print(f"{k + ':':<24}{v}")
    return 0


# name -> register function of the root package's own subcommands.
SUBCOMMANDS = {"demo": register_demo, "env": register_env}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlvos",
        description="Multi-level-backbone STM video object segmentation: train, export, deploy.",
    )
    parser.add_argument("--version", action="version", version=f"mlvos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module in COMMANDS.items():
        importlib.import_module(module).SUBCOMMANDS[name](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The one place it is set (every command, `python -m mlvos.cli` and torchrun included, runs
    # through here): OpenMP threads that spin-wait made small torch convolutions 50-100x slower
    # on a busy 2-core machine (measured); passive waiting costs little elsewhere. Must be set
    # before torch loads; an explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    configure_logging()  # idempotent: main() may run more than once in a process (tests)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MlvosError as e:
        print(f"mlvos {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# `python -m mlvos.cli ...` is `mlvos ...`; torchrun launches DDP training this way
# (`torchrun --nproc_per_node N -m mlvos.cli train ...`).
if __name__ == "__main__":
    sys.exit(main())
