"""The runtime package's subcommands: `mlvos engine` builds (or checks) the TensorRT engines of an
export directory; `mlvos run` propagates annotated masks through a video with a deployed backend.

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
    p.add_argument("--precision", choices=ENGINE_PRECISIONS, default="fp16",
                   help="engine precision, as exported (default fp16)")
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
        help="segment a video (frames folder or video file) from its annotated masks",
        description="Writes one DAVIS palette PNG per processed frame (each atomically), named "
        "like the frame (a video's frames are 00000, 00001, ...), and prints a summary with FPS "
        "and milliseconds per stage. --out is a run folder: its record (.mlvos-run.json) says "
        "which run wrote the masks and whether it finished; a rerun into it (after a kill, or "
        "with other settings) says what it found, deletes the earlier run's masks and starts "
        "over from the first frame (the memory bank cannot be restored from masks).",
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
    p.add_argument(
        "--mask", help="the first processed frame's mask of --input (palette or grayscale PNG "
        "of object ids)")
    p.add_argument(
        "--masks", metavar="DIR",
        help="instead of --mask: a folder of annotations at any frames, each named like its "
        "frame (00040.png, or <frame-name>.png for a frames folder); the first processed frame "
        "needs one. Each id an annotation holds is ground truth there: a new id joins the "
        "tracked objects at that frame, a tracked id is re-anchored (exactly its mask, so a "
        "prediction that had spread is cut back); ids it does not hold go on as predicted "
        "outside its labelled pixels (an all-background annotation changes nothing)")
    p.add_argument("--split", default="val", help="split of --data (val)")
    p.add_argument("--out", required=True,
                   help="output folder for the PNG masks (with --input: a run folder, above)")
    p.add_argument("--backend", choices=BACKENDS, default="ort",
                   help="ort (onnxruntime, default), trt (TensorRT engines) or torch")
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
    p.add_argument("--mem-every", type=int, default=None, metavar="N",
                   help="keep every N-th frame in memory (default: the model's, 5)")
    p.add_argument("--prev-every", type=int, default=None, metavar="N",
                   help="refresh the previous-frame memory slot every N-th frame only (1 = every "
                   "frame, STM's schedule; 2 runs the memory encoder on about half the frames; "
                   "a multiple of --mem-every: no previous-frame slot). Default: the model's "
                   "(1 for paper, 5 for tiny; README, Memory schedule)")
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
    p.add_argument(
        "--overlay", default=None, metavar="PATH",
        help="also write an overlay video: H.264 (browsers play it) in .mp4, .mov or .mkv, "
        "written through PyAV (in the runtime extras), atomically")
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
        "--start", type=_nonnegative_int, default=0, metavar="N",
        help="first frame to process (0-based; default 0); its mask is --mask, or an "
        "annotation in --masks",
    )
    p.add_argument(
        "--frames", type=_positive_int, default=None, metavar="N",
        help="process N frames from --start (default: to the end)",
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


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, received {text}")
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
    import functools
    import time
    from pathlib import Path

    import numpy as np

    from mlvos.errors import InputError, require
    from mlvos.fileio import file_lock
    from mlvos.runtime.backends import DEFAULT_PRECISION
    from mlvos.runtime.predictor import VideoPredictor, describe_schedule
    from mlvos.runtime.run_folder import RunFolder
    from mlvos.runtime.spec import TIMED_STAGES, parse_device
    from mlvos.runtime.video_io import ContactSheet, FrameSource, OverlayWriter, draw_overlay

    args.precision = args.precision or DEFAULT_PRECISION[args.backend]
    palette_io = require("mlvos.palette", "ort", "reading/writing palette PNGs")
    # bars on a terminal only (disable=None): in a pipe or a log they would be lines of noise
    tqdm = functools.partial(require("tqdm", "ort", "progress bars").tqdm, disable=None)
    if args.data:
        for flag in ("mask", "masks", "overlay", "contact_sheet", "sheet_frames", "frames"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag.replace('_', '-')} is for --input (one video); with "
                                 "--data every sequence starts from its first annotation")
        if args.start:
            raise InputError("--start is for --input (one video); with --data every sequence "
                             "starts from its first annotation")
        return _run_dataset(args, palette_io, tqdm)
    if args.mask and args.masks:
        raise InputError("--mask and --masks given together: use --mask FILE for the first "
                         "processed frame's mask, or --masks DIR for annotations at any frames")
    if not (args.mask or args.masks):
        raise InputError("--input needs --mask FIRST.png (the first frame's object ids) or "
                         "--masks DIR (annotations named like their frames)")
    # Everything that can be checked is checked before anything is written: a bad device,
    # input, range, annotation or overlay path leaves no output folder and no overlay.
    parse_device(args.device)
    source = FrameSource(args.input, progress=tqdm)
    if args.start >= len(source):
        raise InputError(f"--start {args.start} is past the last frame of {args.input}: it has "
                         f"{len(source)} frames (0..{len(source) - 1}); pick a smaller --start")
    start = args.start
    count = min(len(source) - start, args.frames or len(source))
    names = source.names[start:start + count]
    annotations = _annotations(args, source, names, palette_io, tqdm)
    sheet = None
    if args.contact_sheet:
        last = start + count - 1
        sheet_frames = args.sheet_frames or sorted(
            {round(float(x)) for x in np.linspace(start, last, 5)})
        early = [i for i in sheet_frames if i < start]
        if early:
            raise InputError(f"--sheet-frames {early} are before --start {start}; pick frames "
                             f"in {start}..{last}")
        late = [i for i in sheet_frames if i > last]
        if late:
            raise InputError(
                f"--sheet-frames {late} are past the last frame to process ({last}: "
                f"{len(source)} frames in {args.input}"
                + (f", --frames {args.frames}" if args.frames else "") + "); pick smaller ones")
        sheet = ContactSheet(args.contact_sheet, sheet_frames)
    overlay = OverlayWriter(args.overlay, getattr(source, "fps", 25.0)) if args.overlay else None
    out = Path(args.out)
    palette = palette_io.davis_palette()
    t0 = time.perf_counter()
    n = 0
    ok = False
    try:
        with _open(args, [source.size] if args.backend == "trt" else []) as runner:
            pred = VideoPredictor(
                runner,
                mem_every=args.mem_every,
                prev_every=args.prev_every,
                max_side=args.max_side,
                scale=args.scale,
                profile=True,
                locality=args.locality,
            )
            objects = sorted({i for _, ids in annotations.values() for i in ids})
            limit = pred.max_objects  # checked here too: before anything is written
            if len(objects) > limit:
                raise InputError(
                    f"the annotations hold {len(objects)} objects ({objects}) but this "
                    f"{args.backend} model takes at most {limit}; rebuild the engine with a "
                    "larger --max-objects or annotate fewer objects")
            # a second `mlvos run` into the same --out fails at once (BusyError, naming this one)
            with file_lock(out, what=f"the run folder {out}"):
                folder = RunFolder(out)
                folder.begin(_fingerprint(args, source, names, annotations), names)
                try:
                    frames = source.read(start, count)
                    for i, (name, frame) in enumerate(tqdm(frames, total=count, unit="frame")):
                        if i in annotations:
                            pred.add_mask(i, palette_io.read_mask(annotations[i][0]))
                        labels = pred.step(frame)
                        palette_io.write_mask(out / f"{name}.png", labels)
                        index = start + i
                        if overlay or (sheet and sheet.wants(index)):
                            image = draw_overlay(frame, labels, palette)
                            if overlay:
                                overlay.write_image(image)
                            if sheet and sheet.wants(index):
                                sheet.add(index, image)
                        n += 1
                except BaseException as e:
                    folder.fail(n, str(e) or type(e).__name__)
                    raise
                folder.finish()
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
    print(describe_schedule(pred.mem_every, pred.prev_every))
    print(f"masks written to {out}")
    if overlay:
        print(f"overlay video (H.264, {overlay.frames} frames) written to {overlay.path}")
    if sheet:
        if sheet.missing:
            print(f"warning: the video ended before frame(s) {sheet.missing} (its header said "
                  f"{len(source)} frames); the contact sheet shows the others")
        print(f"contact sheet of frames {[i for i in sheet.frames if i in sheet.tiles]} "
              f"written to {sheet.save()}")
    return 0


def _annotations(args: argparse.Namespace, source, names: list[str], palette_io,
                 tqdm) -> dict[int, tuple[str, list[int]]]:
    """The masks to give the predictor, checked before anything runs: {index among the processed
    frames: (PNG path, its object ids)}. Annotations without any object are dropped (they give
    no ground truth), except that the first processed frame must have objects.

    Raises:
        InputError / DatasetError: no annotation of the first processed frame, none matching a
            processed frame, a mask of another size than the frames, an unreadable mask.
    """
    from pathlib import Path

    import numpy as np

    from mlvos.errors import InputError

    if args.mask:
        found = {0: Path(args.mask)}
    else:
        folder = Path(args.masks)
        if not folder.is_dir():
            raise InputError(f"--masks {folder} is not a folder; give a folder of PNG "
                             "annotations named like their frames (or --mask FILE)")
        pngs = {p.stem: p for p in folder.iterdir() if p.suffix.lower() == ".png"}
        index = {name: i for i, name in enumerate(names)}
        found = {index[stem]: p for stem, p in pngs.items() if stem in index}
        span = f"{names[0]}..{names[-1]}" if len(names) > 1 else names[0]
        if not found:
            example = f" (e.g. {min(pngs)}.png)" if pngs else ""
            raise InputError(
                f"--masks {folder}: none of its {len(pngs)} PNG files{example} is named like a "
                f"processed frame ({span}); name each annotation after its frame, e.g. "
                f"{names[0]}.png")
        if 0 not in found:
            first = min(found)
            raise InputError(
                f"--masks {folder} has no annotation of the first processed frame {names[0]} "
                f"(the first one is {names[first]}.png): add {names[0]}.png or start there "
                f"with --start {args.start + first}")
        ignored = len(pngs) - len(found)
        if ignored:
            print(f"--masks: {ignored} PNG file(s) in {folder} name no processed frame "
                  f"({span}); ignored")
    height, width = source.size
    result: dict[int, tuple[str, list[int]]] = {}
    items = sorted(found.items())
    bar = tqdm(items, desc="checking annotations", unit="mask", leave=False,
               disable=True if len(items) < 20 else None)
    for i, path in bar:
        w, h = palette_io.mask_header(path)
        if (h, w) != (height, width):
            raise InputError(f"mask {path} is {h}x{w} but the frames are {height}x{width}; "
                             "annotations must have their frames' size")
        ids = [int(v) for v in np.unique(palette_io.read_mask(path)) if v]
        if ids:
            result[i] = (str(path), ids)
        elif i == 0:
            raise InputError(f"mask {path} of the first processed frame {names[0]} holds no "
                             "object (all pixels are 0); annotate at least one object there")
    if len(result) > 1:
        seen: set[int] = set()
        joins = []
        for i, (_, ids) in sorted(result.items()):
            new = [k for k in ids if k not in seen]
            if seen and new:
                joins.append(f"{new} at {names[i]}")
            seen.update(ids)
        print(f"--masks: {len(result)} annotated frames from {names[0]}"
              + (f"; objects joining later: {', '.join(joins)}" if joins else ""))
    return result


def _fingerprint(args: argparse.Namespace, source, names: list[str],
                 annotations: dict[int, tuple[str, list[int]]]) -> dict:
    """What decides the masks of a run, for its run record (JSON values): the input and model
    (path, size and modification time; the export's manifest by hash), backend, precision,
    device, options and the annotations by hash. A rerun compares it to say what changed."""
    import hashlib
    from pathlib import Path

    from mlvos.fileio import sha256_file
    from mlvos.runtime.spec import parse_device

    def stat(path: Path) -> list:
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]

    if source.files is not None:
        listing = hashlib.sha256()
        for path in source.files:
            listing.update(f"{path.name} {path.stat().st_size} {path.stat().st_mtime_ns}\n"
                           .encode())
        inputs = [str(source.path.resolve()), len(source), listing.hexdigest()]
    else:
        inputs = stat(source.path)
    model = Path(args.model)
    manifest = model / "manifest.json"
    kind, index = parse_device(args.device)
    # keys are what the user changes, so that "changed: --scale, input" reads as the cause
    return {
        "input": inputs,
        "frames (--start, --frames)": [names[0], names[-1], len(names)],
        "annotations": {names[i]: sha256_file(path) for i, (path, _) in annotations.items()},
        "--model": sha256_file(manifest) if manifest.is_file() else stat(model),
        "--backend": args.backend,
        "--precision": args.precision,
        "--device": "cpu" if kind == "cpu" else f"cuda:{index}",
        "--mem-every": args.mem_every,  # None: the model's (its manifest is recorded above)
        "--prev-every": args.prev_every,
        "--max-side": args.max_side,
        "--scale": args.scale,
        "--locality": args.locality,
    }


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
    from mlvos.runtime.predictor import VideoPredictor, describe_schedule
    from mlvos.runtime.spec import TIMED_STAGES

    dataset = DavisDataset(args.data, split=args.split)
    total = sum(len(seq) for seq in dataset)
    timings = {s: [] for s in TIMED_STAGES}
    t0 = time.perf_counter()
    sizes = sorted({seq.read_frame(0).shape[:2] for seq in dataset}) if args.backend == "trt" \
        else []
    with _open(args, sizes) as runner, atomic_dir(args.out, force=True) as tmp, \
            tqdm(total=total, unit="frame") as bar:
        for seq in dataset:
            pred = VideoPredictor(runner, mem_every=args.mem_every,
                                  prev_every=args.prev_every, max_side=args.max_side,
                                  scale=args.scale, profile=True, locality=args.locality)
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
    if dataset:
        print(describe_schedule(pred.mem_every, pred.prev_every))
    print(f"masks written to {args.out}; score them with `mlvos eval --gt "
          f"{dataset.mask_dir} --pred {args.out}`")
    return 0


# name -> register function; mlvos.cli adds them to `mlvos` in pipeline order.
SUBCOMMANDS = {"engine": register_engine, "run": register_run}
