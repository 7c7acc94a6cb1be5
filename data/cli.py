"""The data package's subcommands: `mlvos data` makes a synthetic or natural DAVIS-layout dataset
(`synth`), installs the photo set (`photos`), fetches the real-footage check (`vtest`) or checks a
dataset (`check`); `mlvos eval` scores predictions (J&F, or label-free tracking statistics).

Only argparse is imported here; numpy, pillow and OpenCV are imported inside the commands, so
`mlvos data --help` and `mlvos eval --help` are instant.
"""

from __future__ import annotations

import argparse

# The `mlvos eval --help` description.
EVAL_DESCRIPTION = """\
`mlvos eval`: DAVIS 2017 semi-supervised J/F evaluation (official davis2017-evaluation protocol),
or label-free tracking statistics of one video without ground truth.

    mlvos eval --gt DAVIS/Annotations/480p --pred results/ [--sequences a b] [--json OUT]
               [--csv OUT] [--per-object-csv OUT]
    mlvos eval --gt DAVIS/Annotations/480p --baseline-out DIR [--force] ...
    mlvos eval --pred masks/ --first-mask 00000.png [--json OUT]

`--pred` evaluates a folder of predicted sequence folders (palette or grayscale id PNGs named like
the GT frames). `--baseline-out DIR` instead writes the copy-first-mask baseline (each sequence's
first GT mask repeated on every frame) into DIR and evaluates it, a floor any tracker must beat.
Prints a per-sequence table and the global line; `--json` writes the global numbers plus
per-object / per-sequence lists, `--csv` the official global CSV, `--per-object-csv` the official
per-object CSV. All values are fractions in [0, 1] (decays in [-1, 1]).

`--first-mask` (instead of `--gt`) evaluates one video's folder of predicted PNGs (the `--out` of
`mlvos run`) without ground truth: per object of the first-frame mask, its first-frame area, the
largest area relative to it, the frames where it is present and the share of them where its
largest 8-connected component holds >= 90 % of its pixels, with PASS/FAIL for the two checks
"area <= 2x the first frame's" and "one piece in >= 90 % of the present frames"
(mlvos.data.tracking).
"""


def register_data(subparsers) -> None:
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
    synth.add_argument("--style", choices=("synth", "natural"), default="synth",
                       help="synth: procedural textures (colour separates the objects); natural: "
                       "photographic backgrounds with camera motion, photo cut-outs, look-alikes, "
                       "camouflage, occlusion (see mlvos.data.natural) (synth)")
    synth.add_argument("--photos", default=None, metavar="DIR",
                       help="natural style: photographs (an `mlvos data photos` folder, whose "
                       "--split half is used, or any folder of images; default: $MLVOS_PHOTOS "
                       "or ~/.cache/mlvos/photos, installed on first use)")
    synth.set_defaults(func=main_data)

    photos = sub.add_parser(
        "photos", help="install the natural photo set (Debian packages; offline afterwards)",
        description="Fetch photographs from Debian packages with apt-get (no root): wallpapers "
                    "for training backgrounds, OpenCV's sample photos for validation backgrounds, "
                    "Tux Paint's photographic stamps (RGBA cut-outs) split 85/15 by name. "
                    "Writes DIR/photos.json (sources, versions, sha256) and each package's "
                    "copyright file. A complete DIR is reused.",
    )
    photos.add_argument("--out", default=None, metavar="DIR",
                        help="folder (default: $MLVOS_PHOTOS or ~/.cache/mlvos/photos)")
    photos.add_argument("--force", action="store_true", help="download again and rebuild")
    photos.set_defaults(func=main_data)

    vtest = sub.add_parser(
        "vtest", help="OpenCV's vtest.avi + a hand-drawn first-frame mask (real footage, no GT)",
        description="Fetch vtest.avi (768x576, 795 frames, fixed camera over walking people) from "
                    "the Debian package opencv-doc 4.6.0+dfsg-12 with apt-get (no root) and write "
                    "DIR/vtest.avi, DIR/00000.png (ids 1, 2: two people, 3: the parked van) and "
                    "DIR/vtest.json. A complete DIR is reused. Check a tracker on it with "
                    "`mlvos run` then `mlvos eval --pred MASKS --first-mask DIR/00000.png`.",
    )
    vtest.add_argument("--out", required=True, help="output folder (reused when complete)")
    vtest.add_argument("--force", action="store_true",
                       help="download again and rebuild; replace a folder made by something else")
    vtest.add_argument("--video", default=None, metavar="PATH",
                       help="use this local copy of vtest.avi instead of apt-get (sha256-checked)")
    vtest.set_defaults(func=main_data)

    check = sub.add_parser(
        "check", help="validate a DAVIS-layout folder and list sequences/frames/objects",
        description="Validate a DAVIS-layout dataset (files, sizes, mask modes) and summarise it.",
    )
    check.add_argument("root", help="dataset root (holds JPEGImages/, Annotations/, ImageSets/)")
    check.add_argument("--split", default="val", help="split name (val)")
    check.add_argument("--year", default="2017", choices=["2016", "2017"], help="(2017)")
    check.add_argument("--resolution", default="480p", help="(480p)")
    check.set_defaults(func=main_data)

    parser.set_defaults(func=main_data, data_parser=parser)


def main_data(args: argparse.Namespace) -> int:
    command = getattr(args, "data_command", None)
    if command == "synth":
        return _synth(args)
    if command == "vtest":
        return _vtest(args)
    if command == "photos":
        return _photos(args)
    if command == "check":
        return _check(args)
    args.data_parser.print_help()
    return 2


def _synth(args: argparse.Namespace) -> int:
    import time

    start = time.perf_counter()
    if args.style == "natural":
        from mlvos.data.natural import make_natural_dataset
        from mlvos.data.photos import PhotoLibrary, resolve_photos_dir

        photos = PhotoLibrary(resolve_photos_dir(args.photos),
                              split="val" if args.split == "val" else "train")
        print(f"photographs: {photos}")
        out = make_natural_dataset(
            args.out, photos, sequences=args.sequences, frames=args.frames, seed=args.seed,
            height=args.height, width=args.width, min_objects=args.min_objects,
            max_objects=args.max_objects,
            split=args.split, force=args.force, progress=True)
    else:
        if args.photos is not None:
            from mlvos.errors import InputError

            raise InputError("--photos is for --style natural")
        from mlvos.data.synth import make_synthetic_dataset

        out = make_synthetic_dataset(
            args.out, sequences=args.sequences, frames=args.frames, seed=args.seed,
            height=args.height, width=args.width, min_objects=args.min_objects,
            max_objects=args.max_objects, split=args.split, exit_prob=args.exit_prob,
            force=args.force, progress=True,
        )
    print(f"wrote {args.sequences} sequences x {args.frames} frames to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _photos(args: argparse.Namespace) -> int:
    import json
    from collections import Counter

    from mlvos.data.photos import MANIFEST, default_photos_dir, install_photos

    out = install_photos(args.out or default_photos_dir(), force=args.force, progress=True)
    meta = json.loads((out / MANIFEST).read_text())
    counts = Counter((f["split"], f["role"]) for f in meta["files"])
    print(f"photo set in {out}:")
    for split in ("train", "val"):
        print(f"  {split}: {counts[(split, 'background')]} backgrounds, "
              f"{counts[(split, 'object')]} cut-outs")
    for p in meta["packages"]:
        print(f"  {p['package']} {p['version']}: {p['files']} files")
    return 0


def _vtest(args: argparse.Namespace) -> int:
    from mlvos.data.vtest import make_vtest

    folder = make_vtest(args.out, force=args.force, video=args.video)
    source = folder.meta["source"]
    origin = (f"{source['package']} {source['version']}" if "package" in source
              else source.get("local_file", "?"))
    print(f"{'reused' if folder.reused else 'wrote'} {folder.path}: {folder.video.name} "
          f"(from {origin}), {folder.mask.name}")
    for key, obj in folder.meta["objects"].items():
        print(f"  object {key}: {obj['name']:<14} bbox {obj['bbox']} area {obj['area']} px")
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


def register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="DAVIS 2017 J&F of a prediction folder (official protocol), or label-free "
        "tracking statistics of one video (--first-mask)",
        description=EVAL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gt", metavar="DIR", help="GT folder, e.g. Annotations/480p")
    p.add_argument(
        "--first-mask",
        metavar="PNG",
        help="no ground truth: label-free tracking statistics of --pred (one video's masks) "
        "against this first-frame mask",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--pred", metavar="DIR",
        help="prediction folder: <seq>/<frame>.png, or <frame>.png with --first-mask",
    )
    src.add_argument(
        "--baseline-out",
        metavar="DIR",
        help="write the copy-first-mask baseline predictions here and evaluate them",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --baseline-out")
    p.add_argument("--sequences", nargs="+", metavar="SEQ", help="evaluate only these sequences")
    p.add_argument(
        "--json", metavar="OUT",
        help="write global + per-object results (or the tracking statistics) as JSON",
    )
    p.add_argument("--csv", metavar="OUT", help="write the official global-results CSV")
    p.add_argument("--per-object-csv", metavar="OUT", help="write the official per-object CSV")
    p.set_defaults(func=main_eval)


def main_eval(args: argparse.Namespace) -> int:
    import sys

    from mlvos.data.evaluate import copy_first_mask_baseline, evaluate_folders, find_attributes

    _check_eval_sources(args)
    if args.first_mask:
        return _eval_tracking(args)
    pred = args.pred
    if args.baseline_out:
        pred = copy_first_mask_baseline(
            args.gt, args.baseline_out, args.sequences, force=args.force
        )
        print(f"wrote copy-first-mask baseline predictions to {pred}")
    result = evaluate_folders(args.gt, pred, args.sequences, progress=sys.stderr.isatty())
    print(result.format_table())
    attributes = find_attributes(args.gt)  # natural datasets: per-attribute breakdown
    table = result.by_attribute(attributes) if attributes else None
    if table:
        print("\nper attribute (natural.json; an object counts under each of its attributes):")
        print(result.format_attributes(table))
    if args.json:
        result.write_json(args.json, by_attribute=table)
        print(f"wrote {args.json}")
    if args.csv:
        result.write_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.per_object_csv:
        result.write_per_object_csv(args.per_object_csv)
        print(f"wrote {args.per_object_csv}")
    return 0


def _check_eval_sources(args: argparse.Namespace) -> None:
    """--pred takes exactly one of --gt / --first-mask; --baseline-out needs --gt."""
    from mlvos.errors import InputError

    if args.baseline_out:
        if not args.gt or args.first_mask:
            raise InputError("--baseline-out copies ground-truth first masks: pass --gt DIR "
                             "(and no --first-mask)")
        return
    if bool(args.gt) == bool(args.first_mask):
        raise InputError(
            "--pred needs exactly one of --gt DIR (J&F against ground truth) or --first-mask PNG "
            f"(label-free tracking statistics), received {'both' if args.gt else 'neither'}")
    if args.first_mask:
        given = [flag for flag, value in (("--sequences", args.sequences), ("--csv", args.csv),
                                          ("--per-object-csv", args.per_object_csv)) if value]
        if given:
            raise InputError(f"{', '.join(given)} apply to J&F with --gt only; with --first-mask "
                             "use --json")


def _eval_tracking(args: argparse.Namespace) -> int:
    from mlvos.data.tracking import tracking_stats

    report = tracking_stats(args.pred, args.first_mask)
    print(report.format_table())
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


# name -> register function; mlvos.cli adds them to `mlvos` in pipeline order.
SUBCOMMANDS = {"data": register_data, "eval": register_eval}
