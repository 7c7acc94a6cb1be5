"""The runtime package's subcommands: `mlvos engine` builds (or checks) the TensorRT engines of an
export directory; `mlvos run` propagates a first-frame mask through a video with a deployed
backend.

Only argparse and light constants are imported here; the backends (onnxruntime, TensorRT, torch)
load inside the commands, so `mlvos run --help` and `mlvos engine --help` are instant.
"""

from __future__ import annotations

import argparse

from mlvos.runtime.backends import BACKENDS
from mlvos.runtime.spec import Precision

ENGINE_PRECISIONS = Precision.GRAPHS  # = runtime.backends.trt.PRECISIONS
# = runtime.backends.trt.FP16_RECIPES, written here so `--help` imports no backend
FP16_RECIPES = ("auto", "strong", "flag")


def register_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "engine",
        help="build TensorRT engines for an export directory (cached per GPU and TensorRT)",
        description=(
            "Parses the export's ONNX graphs with TensorRT and writes one engine per graph, each "
            "with a JSON key (ONNX sha256, TensorRT version, GPU and compute capability, "
            "precision, profile). Engines whose key still matches are reused; others are "
            "rebuilt. Frame sizes are padded up to the model stride. The default profile takes "
            "frames up to landscape 1080p (1080x1920) and 6 objects, tuned for 480p; --resolution "
            "4k (or HxW) raises it. The read decoder's memory grows with objects x (H*W/256)^2, "
            "so size it for the videos you run. `mlvos run --backend trt` picks a profile that "
            "covers its video by itself."
        ),
    )
    p.add_argument("--model", required=True, help="export directory (with manifest.json)")
    p.add_argument("--precision", choices=ENGINE_PRECISIONS, default="fp16")
    p.add_argument(
        "--resolution", default=None, metavar="R",
        help="largest frame: 480p, 720p, 1080p, 4k or HxW (sets --max-height/--max-width; "
        "default 1080p)")
    p.add_argument("--max-height", type=int, default=None, help="largest frame height (1080)")
    p.add_argument("--max-width", type=int, default=None, help="largest frame width (1920)")
    p.add_argument("--max-objects", type=int, default=None, help="most objects at once (6)")
    p.add_argument("--opt-height", type=int, default=None, help="height tuned for (480)")
    p.add_argument("--opt-width", type=int, default=None, help="width tuned for (864)")
    p.add_argument("--opt-objects", type=int, default=None, help="object count tuned for (2)")
    p.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson)")
    p.add_argument("--out", default=None, help="engine folder (default: MODEL/engines)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the cache is valid")
    p.add_argument(
        "--check", action="store_true", help="only check the cache; exit 1 if a build is needed"
    )
    p.add_argument("--timing-cache", default="auto", help="timing-cache file, or 'none'")
    p.add_argument("--workspace-mib", type=int, default=None, help="builder workspace limit")
    p.add_argument(
        "--fp16-recipe",
        choices=FP16_RECIPES,
        default="auto",
        help="fp16 build: auto (strongly typed fp16 graph on TensorRT >= 10.12, else fp32 graph "
        "+ BuilderFlag.FP16), strong, or flag",
    )
    p.add_argument(
        "--no-tf32", action="store_true", help="exact FP32 math (TensorRT allows TF32 by default)"
    )
    p.add_argument("--device", type=cuda_index, default=0, metavar="DEVICE",
                   help="cuda or cuda:N (a bare N is read as cuda:N; default cuda:0)")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.set_defaults(func=main_engine)


def main_engine(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from mlvos.runtime.backends.trt import BuildOptions, EngineCacheError, Profile, ensure_engines
    from mlvos.runtime.manifest import Manifest
    from mlvos.runtime.spec import parse_resolution

    manifest = Manifest.load(args.model)
    given = {}
    if args.resolution:
        _, given["max_height"], given["max_width"] = parse_resolution(args.resolution)
    given.update({
        f.name: getattr(args, f.name) for f in fields(Profile) if getattr(args, f.name) is not None
    })
    profile = Profile(**given) if given else None
    timing = None if str(args.timing_cache).lower() == "none" else args.timing_cache
    options = BuildOptions(
        engine_dir=args.out,
        profile=profile,
        timing_cache=timing,
        dla_core=args.dla_core,
        fp16_recipe=args.fp16_recipe,
        tf32=not args.no_tf32,
        workspace_mib=args.workspace_mib,
        verbose=args.verbose,
        device=args.device,
    )
    try:
        records = ensure_engines(
            manifest,
            args.precision,
            options=options,
            allow_build=not args.check,
            rebuild=args.rebuild,
        )
    except EngineCacheError as e:
        if not args.check:
            raise
        print(f"needs a build: {e}")
        return 1
    for g, rec in records.items():
        key = rec.meta.get("key", {})
        prof = key.get("profile", {})
        print(
            f"{g}: {rec.path} ({'built' if rec.built else 'cached'}; TensorRT "
            f"{key.get('tensorrt')}, {key.get('gpu')}, {args.precision}, up to "
            f"{prof.get('max_objects')} objects at {prof.get('max_height')}x"
            f"{prof.get('max_width')})"
        )
    return 0


def register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="segment a video (frames folder or video file) from its first-frame mask",
        description="Writes one DAVIS palette PNG per frame (each atomically) and prints a "
        "summary with FPS and milliseconds per stage.",
    )
    p.add_argument(
        "--model", required=True, help="export directory (or a checkpoint for --backend torch)"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="folder of frames or a video file (with --mask)")
    src.add_argument(
        "--data", metavar="ROOT",
        help="a DAVIS-layout dataset (JPEGImages/480p, Annotations/480p, ImageSets/2017): every "
        "sequence of --split from its first annotated frame; --out receives <seq>/<frame>.png "
        "for `mlvos eval` (replaced as a whole, atomically)")
    p.add_argument("--mask", help="first-frame mask of --input (palette or grayscale PNG)")
    p.add_argument("--split", default="val", help="split of --data (val)")
    p.add_argument("--out", required=True, help="output folder for the PNG masks")
    p.add_argument("--backend", choices=BACKENDS, default="ort")
    p.add_argument(
        "--precision", default=None, choices=ENGINE_PRECISIONS,
        help="graph precision (as exported); default: fp16 on trt (as `mlvos engine`), fp32 on "
        "ort and torch")
    p.add_argument(
        "--device", default="cpu",
        help="cpu or cuda[:N]: ort (CUDA provider + IO binding), trt, or a torch device",
    )
    p.add_argument("--engine-dir", default=None, help="TensorRT engine cache (trt)")
    p.add_argument(
        "--no-build", action="store_true", help="refuse to build missing/stale engines (trt)"
    )
    p.add_argument(
        "--cuda-graph", action="store_true", help="capture read+decode in a CUDA graph (trt)"
    )
    p.add_argument("--max-side", type=int, default=None, help="internal max frame side (e.g. 1080)")
    p.add_argument("--mem-every", type=int, default=None, help="keep every N-th frame in memory")
    p.add_argument("--scale", type=float, default=1.0,
                   help="internal scale: the network sees the frame x SCALE (then capped by "
                   "--max-side); above 1 it follows small objects and boundaries better at "
                   "a cost that grows faster than the pixels (README, Measured); default 1")
    p.add_argument(
        "--locality", type=float, default=0.0, metavar="SCALE",
        help="location prior against look-alikes: weight each object by a Gaussian of sigma "
        "SCALE x its previous box's longer side around that box (0 = off, the default)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (ort)")
    p.add_argument("--overlay", default=None, help="also write an overlay video (.mp4)")
    p.add_argument(
        "--contact-sheet", default=None, metavar="PATH",
        help="also write one image (.jpg or .png) with the overlays of --sheet-frames in a grid, "
        "at most 1600 px wide",
    )
    p.add_argument(
        "--sheet-frames", type=_frame_list, default=None, metavar="I,J,...",
        help="0-based frames of the contact sheet, e.g. 0,100,200,400,790 (default: 5 evenly "
        "spaced frames from the first to the last processed)",
    )
    p.add_argument(
        "--frames", type=_positive_int, default=None, metavar="N",
        help="process only the first N frames",
    )
    p.set_defaults(func=main_run)


def cuda_index(text: str) -> int:
    """argparse type of a GPU option: cuda, cuda:N or N -> N."""
    from mlvos.runtime.spec import parse_device

    try:
        kind, index = parse_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if kind != "cuda":
        raise argparse.ArgumentTypeError("TensorRT engines are built on a GPU: use cuda or cuda:N")
    return index


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text}")
    return value


def _frame_list(text: str) -> list[int]:
    try:
        frames = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated frame numbers like 0,100,200, received {text!r}") from None
    if not frames or min(frames) < 0:
        raise argparse.ArgumentTypeError(f"expected frame numbers >= 0, received {text!r}")
    return frames


def main_run(args: argparse.Namespace) -> int:
    import itertools
    import time
    from pathlib import Path

    import numpy as np

    from mlvos.errors import InputError, require
    from mlvos.runtime.backends import DEFAULT_PRECISION
    from mlvos.runtime.predictor import VideoPredictor
    from mlvos.runtime.spec import DEFAULT_MEM_EVERY, TIMED_STAGES
    from mlvos.runtime.video_io import ContactSheet, FrameSource, OverlayWriter, draw_overlay

    args.precision = args.precision or DEFAULT_PRECISION[args.backend]
    palette_io = require("mlvos.palette", "ort", "reading/writing palette PNGs")
    tqdm = require("tqdm", "ort", "progress bars").tqdm
    if args.data:
        for flag in ("mask", "overlay", "contact_sheet", "sheet_frames", "frames"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag.replace('_', '-')} is for --input (one video); with "
                                 "--data every sequence starts from its first annotation")
        return _run_dataset(args, palette_io, tqdm)
    if not args.mask:
        raise InputError("--input needs --mask FIRST.png (the first frame's object ids)")
    source = FrameSource(args.input)
    mask = palette_io.read_mask(args.mask)
    total_frames = min(len(source), args.frames or len(source))
    sheet = None
    if args.contact_sheet:
        sheet_frames = args.sheet_frames or sorted(
            {round(float(x)) for x in np.linspace(0, max(total_frames - 1, 0), 5)})
        late = [i for i in sheet_frames if i >= total_frames]
        if late:
            raise InputError(
                f"--sheet-frames {late} are past the last frame to process ({total_frames - 1}: "
                f"{len(source)} frames in {args.input}"
                + (f", --frames {args.frames}" if args.frames else "") + "); pick smaller ones")
        sheet = ContactSheet(args.contact_sheet, sheet_frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overlay = OverlayWriter(args.overlay, getattr(source, "fps", 25.0)) if args.overlay else None
    palette = palette_io.davis_palette()
    ok = False
    t0 = time.perf_counter()
    n = 0
    try:
        with _open(args, [source.size] if args.backend == "trt" else []) as runner:
            pred = VideoPredictor(
                runner,
                mem_every=args.mem_every or DEFAULT_MEM_EVERY,
                max_side=args.max_side,
                scale=args.scale,
                profile=True,
                locality=args.locality,
            )
            pred.add_mask(0, mask)
            frames = itertools.islice(zip(source.names, source), total_frames)
            for i, (name, frame) in enumerate(tqdm(frames, total=total_frames, unit="frame")):
                labels = pred.step(frame)
                palette_io.write_mask(out / f"{name}.png", labels)
                if overlay or (sheet and sheet.wants(i)):
                    image = draw_overlay(frame, labels, palette)
                    if overlay:
                        overlay.write_image(image)
                    if sheet and sheet.wants(i):
                        sheet.add(i, image)
                n += 1
        ok = True
    finally:
        if overlay:
            overlay.close(ok)
    wall = time.perf_counter() - t0
    total = np.array(pred.timings["total"][1:] or pred.timings["total"])
    print(
        f"{n} frames in {wall:.1f} s ({n / wall:.2f} FPS end to end incl. I/O); "
        f"{1e3 / total.mean():.2f} FPS in the predictor ({args.backend}, {args.precision})"
    )
    print(
        "ms per frame (mean, frames 2..N): "
        + ", ".join(f"{s} {np.mean(pred.timings[s][1:] or pred.timings[s]):.1f}"
                    for s in TIMED_STAGES)
    )
    print(f"masks written to {out}")
    if sheet:
        if sheet.missing:
            print(f"warning: the video ended before frame(s) {sheet.missing} (its header said "
                  f"{len(source)} frames); the contact sheet shows the others")
        print(f"contact sheet of frames {[i for i in sheet.frames if i in sheet.tiles]} "
              f"written to {sheet.save()}")
    return 0


def _open(args: argparse.Namespace, sizes: list[tuple[int, int]]):
    """The runner; for trt with engines whose profile covers `sizes` (frame sizes, before
    --max-side/--scale), reusing the cached engines when theirs already does."""
    from mlvos.runtime.backends import open_runner

    profile = None
    if args.backend == "trt":
        from mlvos.runtime.backends.trt import profile_for
        from mlvos.runtime.manifest import Manifest
        from mlvos.runtime.spec import internal_size

        inner = [internal_size(h, w, args.max_side, args.scale) for h, w in sizes]
        profile = profile_for(Manifest.load(args.model), args.precision, inner, args.engine_dir)
    return open_runner(args.model, backend=args.backend, precision=args.precision,
                       device=args.device, threads=args.threads, engine_dir=args.engine_dir,
                       allow_build=not args.no_build, cuda_graph=args.cuda_graph, profile=profile)


def _run_dataset(args: argparse.Namespace, palette_io, tqdm) -> int:
    """--data ROOT: every sequence from its first annotation into --out/<seq>/<frame>.png."""
    import time

    import numpy as np

    from mlvos.data.datasets import DavisDataset
    from mlvos.fileio import atomic_dir
    from mlvos.runtime.predictor import VideoPredictor
    from mlvos.runtime.spec import DEFAULT_MEM_EVERY, TIMED_STAGES

    dataset = DavisDataset(args.data, split=args.split)
    total = sum(len(seq) for seq in dataset)
    timings = {s: [] for s in TIMED_STAGES}
    t0 = time.perf_counter()
    sizes = sorted({seq.read_frame(0).shape[:2] for seq in dataset}) if args.backend == "trt" \
        else []
    with _open(args, sizes) as runner, atomic_dir(args.out, force=True) as tmp, \
            tqdm(total=total, unit="frame") as bar:
        for seq in dataset:
            pred = VideoPredictor(runner, mem_every=args.mem_every or DEFAULT_MEM_EVERY,
                                  max_side=args.max_side, scale=args.scale, profile=True,
                                  locality=args.locality)
            pred.add_mask(0, seq.first_mask())
            for i in range(len(seq)):
                palette_io.write_mask(tmp / seq.name / f"{seq.frames[i].stem}.png",
                                      pred.step(seq.read_frame(i)))
                bar.update(1)
            for s in TIMED_STAGES:
                timings[s] += pred.timings[s][1:]
    wall = time.perf_counter() - t0
    print(f"{len(dataset)} sequences, {total} frames in {wall:.1f} s; "
          f"{1e3 / np.mean(timings['total']):.2f} FPS in the predictor "
          f"({args.backend}, {args.precision})")
    print("ms per frame (mean, frames 2..N): "
          + ", ".join(f"{s} {np.mean(timings[s]):.1f}" for s in TIMED_STAGES))
    print(f"masks written to {args.out}; score them with `mlvos eval --gt "
          f"{dataset.mask_dir} --pred {args.out}`")
    return 0


# name -> register function; mlvos.cli adds them to `mlvos` in pipeline order.
SUBCOMMANDS = {"engine": register_engine, "run": register_run}
