"""`mlvos export`: checkpoint -> ONNX graphs + manifest (+ validation); `--check DIR` re-validates.

Only argparse (and the pure-Python options module) is imported here; torch, onnx and ModelOpt
are imported inside `main`, so `mlvos export --help` works without them.
"""

from __future__ import annotations

import argparse

from mlvos.export.constants import DEFAULT_OPSET, DEFAULT_PRECISIONS, PRECISIONS
from mlvos.model.config import add_read_prior_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (query_encoder, memory_encoder, read_decoder)",
        description=(
            "Export a checkpoint to three ONNX graphs (fp32 and/or mixed-precision fp16) with a "
            "manifest.json, a copy of the checkpoint and a validation.json (onnxruntime vs "
            "PyTorch). `mlvos export --check DIR` re-runs the validation of an export."
        ),
    )
    p.add_argument("--checkpoint", metavar="CKPT", help="mlvos checkpoint to export")
    p.add_argument("--out", metavar="DIR", help="export directory to create")
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="memory slots T of the read_decoder graph (static; default: runtime.spec "
        "DEFAULT_CAPACITY)",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=list(DEFAULT_PRECISIONS),
        help="graph precisions (fp16 = mixed precision, strongly typed; default: %(default)s)",
    )
    p.add_argument("--height", type=int, default=None, help="static padded height (with --width)")
    p.add_argument("--width", type=int, default=None, help="static padded width (with --height)")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)"
    )
    add_read_prior_arguments(p)
    p.add_argument("--force", action="store_true", help="replace an existing export directory")
    p.add_argument(
        "--no-validate", action="store_true", help="skip the onnxruntime-vs-PyTorch validation"
    )
    p.add_argument(
        "--check",
        metavar="DIR",
        default=None,
        help="re-validate an existing export directory (sha256 + parity) instead of exporting",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from mlvos.errors import InputError
    if args.check:
        overrides = args.read_topk is not None or args.read_kernel is not None
        if args.checkpoint or args.out or overrides:
            raise InputError(
                "--check DIR takes no --checkpoint/--out/--read-*: it re-validates the export "
                "as written (its manifest holds the read options); run them separately"
            )
        from mlvos.export.api import check_export

        check_export(args.check)
        return 0
    if not args.checkpoint or not args.out:
        raise InputError("mlvos export needs --checkpoint CKPT and --out DIR (or --check DIR)")
    if (args.height is None) != (args.width is None):
        raise InputError("give both --height and --width for a static size, or neither")
    from mlvos.export.api import export_checkpoint
    from mlvos.runtime.spec import DEFAULT_CAPACITY

    export_checkpoint(
        args.checkpoint,
        args.out,
        capacity=DEFAULT_CAPACITY if args.capacity is None else args.capacity,
        precisions=args.precision,
        size=None if args.height is None else (args.height, args.width),
        opset=args.opset,
        force=args.force,
        validate=not args.no_validate,
        read_topk=args.read_topk,
        read_kernel=args.read_kernel,
    )
    return 0


# name -> register function; mlvos.cli adds it to `mlvos` in pipeline order.
SUBCOMMANDS = {"export": register}
