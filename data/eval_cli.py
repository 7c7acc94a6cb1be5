"""`mlvos eval`: DAVIS 2017 semi-supervised J/F evaluation (official davis2017-evaluation protocol),
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

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="DAVIS 2017 J&F of a prediction folder (official protocol), or label-free "
        "tracking statistics of one video (--first-mask)",
        description=__doc__,
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
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import sys

    from mlvos.data.evaluate import copy_first_mask_baseline, evaluate_folders, find_attributes

    _check_sources(args)
    if args.first_mask:
        return _tracking(args)
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


def _check_sources(args: argparse.Namespace) -> None:
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


def _tracking(args: argparse.Namespace) -> int:
    from mlvos.data.tracking import tracking_stats

    report = tracking_stats(args.pred, args.first_mask)
    print(report.format_table())
    if args.json:
        report.write_json(args.json)
        print(f"wrote {args.json}")
    return 0
