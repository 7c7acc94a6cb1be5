"""`mlvos` command line: one entry point, one subcommand per module.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func=<main(args) -> int>`. Subcommand modules import only argparse at module level and do heavy
imports (torch, onnx, ...) inside `main`, so `mlvos <anything> --help` is instant and works without
optional dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mlvos import __version__
from mlvos.errors import MlvosError

# name -> module that registers it. Order = order in `mlvos --help`.
COMMANDS: dict[str, str] = {
    "env": "mlvos.envinfo",
    "model": "mlvos.model.cli",
    "data": "mlvos.data.cli",
    "eval": "mlvos.data.eval_cli",
    "infer": "mlvos.model.infer_cli",
    "train": "mlvos.model.train_cli",
    "export": "mlvos.export.cli",
    "run": "mlvos.runtime.cli",
    "engine": "mlvos.runtime.engine_cli",
    "calib": "mlvos.calib.cli",
    "profile": "mlvos.profiling.cli",
    "demo": "mlvos.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlvos",
        description="Multi-level-backbone STM video object segmentation: train, export, deploy.",
    )
    parser.add_argument("--version", action="version", version=f"mlvos {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin-wait make small torch convolutions 50-100x slower on a busy
    # 2-core machine; passive waiting costs little elsewhere. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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


if __name__ == "__main__":
    sys.exit(main())
