"""`mlvos calib`: INT8 calibration of an export directory from real propagation data.

Only argparse and the pure-Python options module are imported here; numpy, onnx, onnxruntime and
ModelOpt are imported inside `main`, so `mlvos calib --help` works without them.
"""

from __future__ import annotations

import argparse

from mlvos.calib import constants


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calib",
        help="INT8 Q/DQ graphs for TensorRT from real propagation data (registered as 'int8')",
        description=(
            "Propagate the FP32 graphs of an export over a DAVIS-layout dataset, record what "
            "each graph sees, quantize the graphs to explicit INT8 Q/DQ (ModelOpt ONNX PTQ, or "
            "onnxruntime), keep in FP32 the parts that measurably need it, register the graphs "
            "in the export's manifest.json as precision 'int8' and write calibration.json. "
            "With --eval-data, also score FP32 vs INT8 propagation (J&F, per-frame IoU)."
        ),
    )
    p.add_argument("--model", required=True, metavar="EXPORT_DIR", help="export directory")
    p.add_argument(
        "--data", required=True, metavar="DATASET", help="DAVIS-layout dataset to calibrate on"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the feed cache, calibration.json and predictions (reused on reruns)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=constants.DEFAULT_SAMPLES,
        help=f"calibration frames (each gives one input set per graph; >= {constants.MIN_SAMPLES}; "
        "default: %(default)s)",
    )
    p.add_argument("--sequences", nargs="+", default=None, help="sequences of --data to use")
    p.add_argument("--split", default="val", help="split of --data (default: %(default)s)")
    p.add_argument(
        "--select",
        choices=constants.SELECTIONS,
        default=constants.DEFAULT_SELECTION,
        help="frame selection: evenly spaced or random (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --select random")
    p.add_argument(
        "--method",
        choices=constants.METHODS,
        default=constants.DEFAULT_METHOD,
        help="quantizer: modelopt (TensorRT's Q/DQ placement), ort (onnxruntime, Conv/MatMul) "
        "or ort-cpu (onnxruntime, placed so that onnxruntime's CPU provider runs the "
        "convolutions in INT8: faster than FP32 there; symmetric like the others) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--calibrator",
        choices=constants.CALIBRATORS,
        default=constants.DEFAULT_CALIBRATOR,
        help="activation range calibration (default: %(default)s)",
    )
    p.add_argument(
        "--keep-fp32",
        nargs="+",
        choices=constants.KEEP_CHOICES,
        default=[constants.KEEP_AUTO],
        metavar="PART",
        help=f"parts kept in FP32: '{constants.KEEP_AUTO}' (measure each candidate, keep those "
        f"removing >= {round(100 * constants.KEEP_MIN_GAIN)}%% of a graph's error), 'none', or "
        f"candidates from {', '.join(constants.CANDIDATES)} (default: {constants.KEEP_AUTO})",
    )
    p.add_argument(
        "--mem-every", type=int, default=None, help="memory period of the propagations (5)"
    )
    p.add_argument(
        "--eval-data",
        default=None,
        metavar="DATASET",
        help="validation set: report J&F of FP32 vs INT8 propagation (use other videos than "
        "--data)",
    )
    p.add_argument("--eval-split", default="val", help="split of --eval-data")
    p.add_argument("--eval-sequences", nargs="+", default=None, help="sequences of --eval-data")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    p.add_argument(
        "--force", action="store_true", help="replace int8 graphs the export already holds"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from mlvos.calib.api import calibrate
    from mlvos.runtime.spec import DEFAULT_MEM_EVERY

    calibrate(
        args.model,
        args.data,
        args.out,
        samples=args.samples,
        sequences=args.sequences,
        split=args.split,
        selection=args.select,
        seed=args.seed,
        method=args.method,
        calibrator=args.calibrator,
        keep_fp32=args.keep_fp32,
        mem_every=DEFAULT_MEM_EVERY if args.mem_every is None else args.mem_every,
        eval_data=args.eval_data,
        eval_split=args.eval_split,
        eval_sequences=args.eval_sequences,
        force=args.force,
        threads=args.threads,
    )
    return 0


# name -> register function; mlvos.cli adds it to `mlvos` in pipeline order.
SUBCOMMANDS = {"calib": register}
