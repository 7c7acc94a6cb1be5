"""`mlvos eval`: DAVIS 2017 semi-supervised J/F evaluation (official davis2017-evaluation protocol).

    mlvos eval --gt DAVIS/Annotations/480p --pred results/ [--sequences a b] [--json OUT]
               [--csv OUT] [--per-object-csv OUT]
    mlvos eval --gt DAVIS/Annotations/480p --baseline-out DIR [--force] ...

`--pred` evaluates a folder of predicted sequence folders (palette or grayscale id PNGs named like
the GT frames). `--baseline-out DIR` instead writes the copy-first-mask baseline (each sequence's
first GT mask repeated on every frame) into DIR and evaluates it, a floor any tracker must beat.
Prints a per-sequence table and the global line; `--json` writes the global numbers plus
per-object / per-sequence lists, `--csv` the official global CSV, `--per-object-csv` the official
per-object CSV. All values are fractions in [0, 1] (decays in [-1, 1]).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="DAVIS 2017 semi-supervised J&F of a prediction folder (official protocol)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gt", required=True, metavar="DIR", help="GT folder, e.g. Annotations/480p")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", metavar="DIR", help="prediction folder (<seq>/<frame>.png)")
    src.add_argument(
        "--baseline-out",
        metavar="DIR",
        help="write the copy-first-mask baseline predictions here and evaluate them",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --baseline-out")
    p.add_argument("--sequences", nargs="+", metavar="SEQ", help="evaluate only these sequences")
    p.add_argument("--json", metavar="OUT", help="write global + per-object results as JSON")
    p.add_argument("--csv", metavar="OUT", help="write the official global-results CSV")
    p.add_argument("--per-object-csv", metavar="OUT", help="write the official per-object CSV")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import sys

    from mlvos.data.evaluate import copy_first_mask_baseline, evaluate_folders

    pred = args.pred
    if args.baseline_out:
        pred = copy_first_mask_baseline(
            args.gt, args.baseline_out, args.sequences, force=args.force
        )
        print(f"wrote copy-first-mask baseline predictions to {pred}")
    result = evaluate_folders(args.gt, pred, args.sequences, progress=sys.stderr.isatty())
    print(result.format_table())
    if args.json:
        result.write_json(args.json)
        print(f"wrote {args.json}")
    if args.csv:
        result.write_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.per_object_csv:
        result.write_per_object_csv(args.per_object_csv)
        print(f"wrote {args.per_object_csv}")
    return 0
