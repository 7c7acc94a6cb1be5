"""`mlvos profile`: latency sweeps of a deployed model; `compare` two reports; `gpu-check`.
`mlvos check`: per-graph numerics of each precision (or TensorRT engine) against FP32.

Only argparse is imported at module level; numpy, torch, onnx and matplotlib are imported by the
commands, so `mlvos profile --help` works without them.
"""

from __future__ import annotations

import argparse

from mlvos.runtime.backends import BACKENDS
from mlvos.runtime.cli import cuda_index
from mlvos.runtime.spec import DEFAULT_MEM_EVERY, Precision

DEFAULT_RESOLUTIONS = "480p,720p,1080p"
DEFAULT_OBJECTS = "1,2,4"


def _int_list(text: str) -> tuple[int, ...]:
    """ "1,2,4" or "1..6" -> (1, 2, 4) / (1, ..., 6)."""
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            return tuple(range(lo, hi + 1))
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M,... or A..B, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="latency per stage and end to end: resolution / memory / object / long-run sweeps",
        description=(
            "Drive VideoPredictor with real footage (--input), natural-looking frames (the "
            "default, from the photo library) or procedural ones, and report, per stage and end "
            "to end, "
            "mean/p50/p90/p99 latency and FPS after warm-up (CUDA events on a GPU, wall clock on "
            "the CPU), read+decode vs frames in memory, latency vs object count, a long run "
            "(latency vs frame index, RSS growth), peak memory, GMACs per stage and achieved "
            "TFLOP/s. Writes report.json, CSVs and PNG plots into --out. "
            "Subcommands: `compare A.json B.json`, `gpu-check --out DIR`."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model", help="export directory (or, for --backend torch, a checkpoint file)"
    )
    src.add_argument(
        "--checkpoint",
        help="a checkpoint; for --backend ort it is exported into --export-dir first (reused "
        "while the checkpoint's sha256 matches)",
    )
    p.add_argument(
        "--export-dir",
        default=None,
        help="export cache for --checkpoint (default: CHECKPOINT's folder/<name>-export)",
    )
    p.add_argument("--out", help="report folder (report.json, *.csv, *.png)")
    p.add_argument("--backend", choices=BACKENDS, default="ort",
                   help="ort (onnxruntime, default), trt (TensorRT engines) or torch")
    p.add_argument(
        "--precision", default=None, choices=Precision.GRAPHS,
        help="graph precision (as exported); default: fp16 on trt, fp32 on ort and torch")
    p.add_argument(
        "--device", default="cpu",
        help="cpu or cuda[:N] (ort: CUDA provider + IO binding; trt) or a torch device",
    )
    p.add_argument(
        "--resolutions",
        type=_names,
        default=None,
        help="480p, 720p, 1080p or HxW, comma separated; the first is used for the object, "
        f"memory and long-run sweeps (default: {DEFAULT_RESOLUTIONS}; with --input, its own "
        "size)",
    )
    p.add_argument(
        "--input", default=None, metavar="VIDEO",
        help="profile on real footage: a video file or frames folder (its first frames, "
        "resized to each resolution); the report names the content measured")
    p.add_argument(
        "--mask", default=None, metavar="PNG",
        help="with --input: the first frame's object ids (the first N ids for N objects); "
        "default: N ellipses")
    p.add_argument(
        "--content", choices=("natural", "synthetic"), default="natural",
        help="frames without --input: natural-looking (photo library, `mlvos data photos`; "
        "procedural when it is not installed) or the procedural generator (default: natural)")
    p.add_argument(
        "--objects",
        type=_int_list,
        default=_int_list(DEFAULT_OBJECTS),
        help=f"object counts; the first is used for the other sweeps (default: {DEFAULT_OBJECTS})",
    )
    p.add_argument(
        "--memory",
        type=_int_list,
        default=None,
        help="valid memory slots for the read+decode sweep, e.g. 1..6 (default: 1..capacity)",
    )
    p.add_argument(
        "--long", type=int, default=200, help="frames of the long run (0 = skip; default 200)"
    )
    p.add_argument("--warmup", type=int, default=None,
                   help="discarded frames (default: as many as fill the memory bank, e.g. 21 at "
                   "capacity 6 and --mem-every 5, so that timed frames read a full bank as in a "
                   "long video)")
    p.add_argument("--iters", type=int, default=20, help="timed frames per config (default 20)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (ORT intra-op, torch)")
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="memory slots of a torch checkpoint, or of the export made for --checkpoint "
        "(default: runtime.spec DEFAULT_CAPACITY); an export directory keeps its own",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic videos")
    p.add_argument("--mem-every", type=int, default=None, metavar="N",
                   help="memory schedule: every N-th frame is kept (default: the model's, "
                   f"{DEFAULT_MEM_EVERY})")
    p.add_argument("--prev-every", type=int, default=None, metavar="N",
                   help="memory schedule: the previous-frame slot is refreshed every N-th frame "
                   "(default: the model's, 1 for paper and 5 for tiny: `mlvos run --help`)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="backends that support it (trt) replay read+decode as a CUDA graph",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=main)

    psub = p.add_subparsers(dest="profile_command", metavar="<profile-command>")
    cmp_ = psub.add_parser("compare", help="print two reports side by side with ratios (B/A)")
    cmp_.add_argument("reports", nargs=2, metavar="REPORT.json")
    cmp_.set_defaults(func=main_compare)

    nodes = psub.add_parser(
        "nodes",
        help="read_decoder node by node (onnxruntime profiler): memory read, decoder and "
        "aggregation time per resolution and object count",
    )
    nodes.add_argument("--model", required=True, help="export directory")
    nodes.add_argument("--precision", default="fp32", choices=Precision.GRAPHS,
                       help="graph precision (default fp32)")
    nodes.add_argument("--resolutions", type=_names, default=_names("480p,1080p"),
                       help="comma separated (default 480p,1080p)")
    nodes.add_argument("--objects", type=_int_list, default=_int_list("1,2,3"),
                       help="object counts (default 1,2,3)")
    nodes.add_argument("--iters", type=int, default=3, help="timed runs per config (default 3)")
    nodes.add_argument("--threads", type=int, default=2, help="ORT threads (default 2)")
    nodes.add_argument("--out", default=None,
                       help="folder for nodes.json and nodes.md (default: print only)")
    nodes.set_defaults(func=main_nodes)

    gpu = psub.add_parser(
        "gpu-check",
        help="one time-boxed GPU check: torch backend (paper + tiny, FP16/FP32), TensorRT if any",
        description=(
            "Runs the torch backend with random weights of each --variant in FP16 and FP32 at "
            "480p, 720p and 1080p: per-stage latency (CUDA events), FPS, peak device memory, "
            "CUDA graphs on/off for the query encoder and read+decode, FP16-vs-FP32 mask "
            "agreement and both precisions against the torch backend on the CPU in FP32. Where "
            "TensorRT is importable and a GPU usable: export, FP16 engines, their latency and "
            "`mlvos check`. Needs only torch (+ mlvos) otherwise; every section is time-boxed "
            "(default 420 s in all, under 8 minutes on an H100) and failures are recorded, not "
            "raised. --smoke runs a tiny CPU version (for tests). Exit status 0 when every "
            "section ran (or was skipped for an absent option), 1 otherwise; the report is "
            "written either way."
        ),
    )
    gpu.add_argument("--out", dest="gpu_out", required=True, metavar="DIR", help="report folder")
    gpu.add_argument("--smoke", action="store_true", help="tiny CPU run (tiny variant, 64x96)")
    gpu.add_argument(
        "--variant",
        "--variants",
        dest="gpu_variants",
        nargs="+",
        type=_names,
        default=None,
        metavar="VARIANT",
        help="model variants, space- or comma-separated (default: paper tiny; smoke: tiny)",
    )
    gpu.add_argument(
        "--device",
        dest="gpu_device",
        metavar="DEVICE",
        default=None,
        help="default cuda (smoke: cpu)",
    )
    gpu.add_argument(
        "--resolutions",
        dest="gpu_resolutions",
        metavar="RESOLUTIONS",
        type=_names,
        default=None,
        help="default 480p,720p,1080p (smoke: 64x96)",
    )
    gpu.add_argument(
        "--precisions", type=_names, default=None, help="default fp16,fp32 (fp32 only on the CPU)"
    )
    gpu.add_argument(
        "--objects",
        dest="gpu_objects",
        metavar="N",
        type=int,
        default=1,
        help="objects in the latency runs (default 1; the agreement video uses >= 2)",
    )
    gpu.add_argument(
        "--iters",
        dest="gpu_iters",
        metavar="N",
        type=int,
        default=None,
        help="timed frames per config (default 30; smoke 3)",
    )
    gpu.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="time box of the whole check in seconds (default 420; smoke 50)",
    )
    gpu.add_argument(
        "--no-trt",
        action="store_true",
        help="skip the TensorRT part even where TensorRT and a GPU are usable",
    )
    gpu.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN autotune (costs time per new shape)",
    )
    gpu.set_defaults(func=main_gpu_check)


def _ensure_export(checkpoint: str, export_dir: str, precision: str, capacity: int | None) -> str:
    """Export `checkpoint` into `export_dir` unless a matching export is already there."""
    from mlvos.errors import require
    from mlvos.runtime.spec import DEFAULT_CAPACITY

    api = require("mlvos.export.api", "export", "exporting --checkpoint for --backend ort")
    capacity = capacity or DEFAULT_CAPACITY
    precisions = ("fp32",) if precision == "fp32" else ("fp32", precision)
    print(f"exporting {checkpoint} -> {export_dir} ({', '.join(precisions)}, capacity "
          f"{capacity}), unless an export of it is there")
    _, reused = api.cached_export(checkpoint, export_dir, precisions=precisions,
                                  capacity=capacity)
    if reused:
        print(f"reusing export {export_dir} of {checkpoint}")
    return export_dir


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlvos.errors import InputError
    if not args.out or not (args.model or args.checkpoint):
        raise InputError(
            "mlvos profile needs --out DIR and --model DIR (or --checkpoint CKPT); see "
            "`mlvos profile --help`"
        )
    from mlvos.runtime.backends import DEFAULT_PRECISION

    args.precision = args.precision or DEFAULT_PRECISION[args.backend]
    model = args.model
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not ckpt.is_file():
            raise InputError(
                f"checkpoint {ckpt} does not exist; create one with "
                f"`mlvos model init --variant tiny --out {ckpt}`"
            )
        if args.backend == "torch":
            model = str(ckpt)
        else:
            export_dir = args.export_dir or str(ckpt.with_name(f"{ckpt.stem}-export"))
            model = _ensure_export(str(ckpt), export_dir, args.precision, args.capacity)
    from mlvos.profiling import ProfileConfig, run_profile, summary_table, write_report

    if args.mask and not args.input:
        raise InputError("--mask is the first-frame mask of --input; give --input VIDEO too")
    resolutions = args.resolutions
    if resolutions is None:
        if args.input:
            from mlvos.profiling.content import input_size

            h, w = input_size(args.input)
            resolutions = [f"{h}x{w}"]
        else:
            resolutions = _names(DEFAULT_RESOLUTIONS)
    config = ProfileConfig(
        model=str(model),
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        resolutions=tuple(resolutions),
        input=args.input,
        mask=args.mask,
        mem_every=args.mem_every,
        prev_every=args.prev_every,
        content=args.content,
        objects=tuple(args.objects),
        memory=tuple(args.memory) if args.memory else None,
        long=args.long,
        warmup=args.warmup,
        iters=args.iters,
        threads=args.threads,
        seed=args.seed,
        capacity=args.capacity,
        cuda_graph=args.cuda_graph,
    )
    report = run_profile(config)
    written = write_report(report, args.out, plots=not args.no_plots)
    print()
    print(summary_table(report))
    print(
        f"wrote {', '.join(p.name for p in written)} to {args.out} ({report['duration_s']:.0f} s)"
    )
    if not report["checks"]["stage_sum"]["ok"]:
        print(
            "error: the per-stage times do not add up to the end-to-end time (see "
            "report.json checks.stage_sum)"
        )
        return 1
    return 0


def main_compare(args: argparse.Namespace) -> int:
    from mlvos.profiling import compare_reports, load_report

    a, b = (load_report(p) for p in args.reports)
    print(compare_reports(a, b))
    return 0


def _variants(given: list[tuple[str, ...]] | None) -> tuple[str, ...] | None:
    """--variant a b,c -> ("a", "b", "c"); None stays None (the default)."""
    return None if given is None else tuple(v for names in given for v in names)


def main_gpu_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlvos.profiling.gpu_check import REPORT_FILE, run_gpu_check
    from mlvos.profiling.gpu_report import final_table

    report = run_gpu_check(
        out=args.gpu_out,
        smoke=args.smoke,
        variants=_variants(args.gpu_variants),
        device=args.gpu_device,
        resolutions=args.gpu_resolutions,
        precisions=args.precisions,
        objects=args.gpu_objects,
        iters=args.gpu_iters,
        budget_s=args.budget_s,
        cudnn_benchmark=args.cudnn_benchmark,
        trt=not args.no_trt,
    )
    print()
    print(final_table(report))
    print(f"wrote {Path(args.gpu_out) / REPORT_FILE} ({report['elapsed_s']:.0f} s)")
    return 0 if report.get("status") == "ok" else 1


def main_nodes(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mlvos.errors import InputError
    from mlvos.fileio import atomic_write_text
    from mlvos.profiling.node_profile import nodes_table, profile_nodes

    if args.iters < 1 or any(k < 1 for k in args.objects):
        raise InputError("need --iters >= 1 and object counts >= 1")
    report = profile_nodes(args.model, resolutions=args.resolutions, objects=args.objects,
                           precision=args.precision, iters=args.iters, threads=args.threads)
    table = nodes_table(report)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "nodes.json", json.dumps(report, indent=1))
        atomic_write_text(out / "nodes.md", table + "\n")
        print(f"wrote nodes.json, nodes.md to {out}")
    return 0


def register_check(sub: argparse._SubParsersAction) -> None:
    from mlvos.runtime.spec import DEFAULT_MEM_EVERY, Precision

    p = sub.add_parser(
        "check",
        help="numerics per graph and precision vs FP32 (Polygraphy), TensorRT attention fusion",
        description=(
            "Record what each graph receives during an FP32 propagation (--data, or a synthetic "
            "video), then run every candidate graph on exactly those inputs with Polygraphy's "
            "comparator against the FP32 graphs on onnxruntime: TensorRT engines where TensorRT "
            "and a GPU are present, else the fp16/int8 graphs on onnxruntime. Prints per output "
            "the max abs / rel error and pass/fail per precision, whether TensorRT fused the "
            "memory read's attention, and the `polygraphy run` lines that repeat each "
            "comparison from the saved feeds. Writes check.json, feeds/ and outputs/ to --out. "
            "Exit status 1 when a precision fails."
        ),
    )
    p.add_argument("--model", required=True, metavar="EXPORT_DIR", help="export directory")
    p.add_argument(
        "--data", default=None, metavar="DATASET",
        help="DAVIS-layout dataset to propagate (default: a synthetic video)",
    )
    p.add_argument("--split", default="val", help="split of --data (default: val)")
    p.add_argument("--sequences", nargs="+", default=None, help="sequences of --data to use")
    p.add_argument(
        "--precision", nargs="+", default=None, choices=Precision.GRAPHS, dest="precisions",
        help="candidates (default: trt, every precision of the export; ort, all but fp32)",
    )
    p.add_argument(
        "--backend", choices=("auto", "ort", "trt"), default="auto",
        help="trt: TensorRT engines (built if needed); ort: onnxruntime graphs; auto (default): "
        "trt when TensorRT and a CUDA device are there, else ort",
    )
    p.add_argument(
        "--samples", type=int, default=4, help="recorded frames, one feed per graph each (4)"
    )
    p.add_argument("--out", default=None, help="report folder (default: EXPORT_DIR/check)")
    p.add_argument(
        "--mem-every", type=int, default=DEFAULT_MEM_EVERY,
        help=f"memory period of the recording ({DEFAULT_MEM_EVERY})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (recording)")
    p.add_argument("--engine-dir", default=None, help="TensorRT engines (EXPORT_DIR/engines)")
    p.add_argument("--device", type=cuda_index, default=0, metavar="DEVICE",
                   help="GPU of the trt backend: cuda or cuda:N (default cuda:0)")
    p.set_defaults(func=main_check)


def main_check(args: argparse.Namespace) -> int:
    from mlvos.profiling.compare import CHECK_FILE, run_check, summary_table

    report = run_check(
        model=args.model,
        out=args.out,
        data=args.data,
        split=args.split,
        sequences=args.sequences,
        precisions=args.precisions,
        backend=args.backend,
        samples=args.samples,
        mem_every=args.mem_every,
        seed=args.seed,
        threads=args.threads,
        engine_dir=args.engine_dir,
        device=args.device,
    )
    print()
    print(summary_table(report))
    print("\nrepeat by hand (reference outputs, then each comparison):")
    for line in report["polygraphy_commands"]:
        print(f"  {line}")
    for a in report["attention"].values():
        if a.get("inspect_command"):
            print(f"  {a['inspect_command']}")
    out = args.out or f"{args.model}/check"
    print(f"wrote {out}/{CHECK_FILE} ({report['seconds']:.0f} s)")
    return 0 if report["passed"] else 1


def register_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="one table: size, J&F, ms/frame and peak memory per backend x precision",
        description=(
            "For an export directory (or a checkpoint, exported first into --export-dir), one "
            "row per backend x precision this machine can run: torch (the export's checkpoint), "
            "onnxruntime on every precision of the export, TensorRT where it and a GPU are "
            "usable. Columns: size on disk (MB of that precision's graphs; the checkpoint for "
            "torch, the engines for trt), J&F on --data (DAVIS 2017 protocol; each sequence cut "
            "to --max-frames), end-to-end ms/frame p50/p90 and FPS at --resolution with "
            "--objects objects (natural frames from --data, resized), and peak RSS of the row's "
            "own process (each row runs in a fresh one) plus peak device memory where the "
            "backend reports it. Rows that cannot run say why and how to fix it. Prints the "
            "markdown table; --out DIR writes table.md, table.csv and table.json."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="EXPORT_DIR",
                     help="export directory (default: the demo's, .cache/demo/export)")
    src.add_argument("--checkpoint", metavar="CKPT",
                     help="a checkpoint: exported (fp32 + fp16) into --export-dir first, reused "
                     "while its sha256 matches")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="export cache for --checkpoint (default: CKPT's folder/<name>-export)")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="DAVIS-layout validation set (default: the demo's natural videos, "
                   ".cache/demo/natural-*)")
    p.add_argument("--split", default="val", help="ImageSets split of --data (default: val)")
    p.add_argument("--sequences", type=int, default=None, metavar="N",
                   help="score only the first N sequences of --data (default: all)")
    p.add_argument("--max-frames", type=int, default=15, metavar="N",
                   help="score each sequence on its first N frames, >= 3 (default: 15, which "
                   "keeps the demo's table under 5 minutes on 2 CPU cores; 0 = whole sequences)")
    p.add_argument("--resolution", default="480p",
                   help="timing frame size: 480p, 720p, 1080p, 4k or HxW (default: 480p)")
    p.add_argument("--objects", type=int, default=2,
                   help="objects tracked in the timed run (default: 2)")
    p.add_argument("--warmup", type=int, default=3, help="discarded frames (default: 3)")
    p.add_argument("--iters", type=int, default=20, help="timed frames (default: 20)")
    p.add_argument("--backends", type=_names, default=BACKENDS, metavar="B[,B...]",
                   help=f"backends to consider (default: {','.join(BACKENDS)})")
    p.add_argument("--precisions", type=_names, default=Precision.GRAPHS, metavar="P[,P...]",
                   help=f"precisions to consider (default: {','.join(Precision.GRAPHS)})")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda[:N] for the torch and ort rows (default: cpu); trt rows "
                   "run on cuda:N (N from this option, else 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of onnxruntime and torch (default: theirs)")
    p.add_argument("--row-timeout", type=float, default=900.0, metavar="S",
                   help="kill a row's process after S seconds (default: 900)")
    p.add_argument("--save-pred", action="store_true",
                   help="with --out: write each row's predictions to OUT/pred/<backend>-"
                   "<precision>/ (for `mlvos eval` when --max-frames covers the sequences)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write table.md, table.csv and table.json here")
    p.set_defaults(func=main_benchmark)


def main_benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlvos.errors import InputError
    from mlvos.profiling.benchmark import (
        DEMO_EXPORT,
        BenchmarkConfig,
        default_data,
        ensure_export,
        markdown_table,
        run_benchmark,
        write_tables,
    )

    if args.save_pred and not args.out:
        raise InputError("--save-pred writes into --out DIR/pred; pass --out DIR")
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        model = ensure_export(ckpt, args.export_dir or ckpt.with_name(f"{ckpt.stem}-export"))
    elif args.model:
        model = Path(args.model)
    elif (DEMO_EXPORT / "manifest.json").is_file():
        model = DEMO_EXPORT
    else:
        raise InputError(
            "no model: pass --model EXPORT_DIR or --checkpoint CKPT (the default, the demo's "
            f"export {DEMO_EXPORT}, is absent: `mlvos demo` makes it)"
        )
    data = args.data or default_data()
    if data is None:
        raise InputError(
            "no validation set: pass --data ROOT (a DAVIS-layout set, e.g. `mlvos data synth "
            "--style natural --out ROOT --sequences 2 --frames 20`); the default, the demo's "
            "natural videos (.cache/demo/natural-*), is absent: `mlvos demo` makes it"
        )
    config = BenchmarkConfig(
        model=str(model), data=str(data), split=args.split, sequences=args.sequences,
        max_frames=args.max_frames or None, resolution=args.resolution, objects=args.objects,
        warmup=args.warmup, iters=args.iters, device=args.device, threads=args.threads,
        backends=tuple(args.backends), precisions=tuple(args.precisions),
        row_timeout_s=args.row_timeout,
        pred_dir=str(Path(args.out) / "pred") if args.save_pred else None,
    )
    report = run_benchmark(config)
    print()
    print(markdown_table(report))
    if args.out:
        written = write_tables(report, args.out)
        print(f"\nwrote {', '.join(p.name for p in written)} to {args.out} "
              f"({report['seconds']:.0f} s)")
    return 0 if all(r["status"] != "failed" for r in report["rows"]) else 1


# name -> register function; mlvos.cli adds it to `mlvos` in pipeline order.
SUBCOMMANDS = {"profile": register, "check": register_check, "benchmark": register_benchmark}
