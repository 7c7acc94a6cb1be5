"""`mlvos data`: make a synthetic DAVIS-layout dataset (`synth`) or check a dataset (`check`)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="synthetic datasets and dataset checks",
        description="Make a procedural DAVIS-layout dataset, or validate a DAVIS-layout folder.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>")

    synth = sub.add_parser(
        "synth", help="write a synthetic DAVIS-2017-layout dataset with exact masks",
        description="Procedural textured objects moving over a textured background; every frame "
                    "annotated. Same arguments -> byte-identical files.",
    )
    synth.add_argument("--out", required=True, help="output folder (must not exist, see --force)")
    synth.add_argument("--sequences", type=int, default=10, help="number of sequences (10)")
    synth.add_argument("--frames", type=int, default=30, help="frames per sequence (30)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (0)")
    synth.add_argument("--height", type=int, default=480, help="frame height (480)")
    synth.add_argument("--width", type=int, default=854, help="frame width (854)")
    synth.add_argument("--min-objects", type=int, default=1, help="fewest objects (1)")
    synth.add_argument("--max-objects", type=int, default=5, help="most objects (5)")
    synth.add_argument("--split", default="val",
                       help="split name written to ImageSets/2017/<split>.txt (val)")
    synth.add_argument("--exit-prob", type=float, default=0.3,
                       help="share of sequences where an object leaves and re-enters (0.3)")
    synth.add_argument("--force", action="store_true", help="replace --out if it exists")
    synth.set_defaults(func=main)

    check = sub.add_parser(
        "check", help="validate a DAVIS-layout folder and list sequences/frames/objects",
        description="Validate a DAVIS-layout dataset (files, sizes, mask modes) and summarise it.",
    )
    check.add_argument("root", help="dataset root (holds JPEGImages/, Annotations/, ImageSets/)")
    check.add_argument("--split", default="val", help="split name (val)")
    check.add_argument("--year", default="2017", choices=["2016", "2017"], help="(2017)")
    check.add_argument("--resolution", default="480p", help="(480p)")
    check.set_defaults(func=main)

    parser.set_defaults(func=main, data_parser=parser)


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "data_command", None)
    if command == "synth":
        return _synth(args)
    if command == "check":
        return _check(args)
    args.data_parser.print_help()
    return 2


def _synth(args: argparse.Namespace) -> int:
    import time

    from mlvos.data.synth import make_synthetic_dataset

    start = time.perf_counter()
    out = make_synthetic_dataset(
        args.out, sequences=args.sequences, frames=args.frames, seed=args.seed,
        height=args.height, width=args.width, min_objects=args.min_objects,
        max_objects=args.max_objects, split=args.split, exit_prob=args.exit_prob,
        force=args.force, progress=True,
    )
    print(f"wrote {args.sequences} sequences x {args.frames} frames to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    from mlvos.data.datasets import DavisDataset

    ds = DavisDataset(args.root, split=args.split, year=args.year, resolution=args.resolution)
    total = 0
    print(f"{'sequence':<24} {'frames':>6} {'annotated':>9} {'objects':>7}")
    for seq in ds:
        total += len(seq)
        print(f"{seq.name:<24} {len(seq):>6} {len(seq.annotated):>9} {seq.num_objects:>7}")
    print(f"ok: {len(ds)} sequences, {total} frames ({args.year} {args.split}, "
          f"{args.resolution}) in {ds.root}")
    return 0
