"""`mlvos engine`: build (or check) the TensorRT engines of an export directory."""

from __future__ import annotations

import argparse

PRECISIONS = ("fp16", "int8", "fp32")  # = runtime.backends.trt.PRECISIONS (kept import-free)
FP16_RECIPES = ("auto", "strong", "flag")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "engine",
        help="build TensorRT engines for an export directory (cached per GPU and TensorRT)",
        description=(
            "Parses the export's ONNX graphs with TensorRT and writes one engine per graph, each "
            "with a JSON key (ONNX sha256, TensorRT version, GPU and compute capability, "
            "precision, profile). Engines whose key still matches are reused; others are "
            "rebuilt. Frame sizes are padded up to the model stride. The read decoder's memory "
            "grows with objects x (H*W/256)^2, so size --max-* for the videos you run."
        ),
    )
    p.add_argument("--model", required=True, help="export directory (with manifest.json)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16")
    p.add_argument("--max-height", type=int, default=None, help="largest frame height (720)")
    p.add_argument("--max-width", type=int, default=None, help="largest frame width (1280)")
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
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from mlvos.runtime.backends.trt import BuildOptions, EngineCacheError, Profile, ensure_engines
    from mlvos.runtime.manifest import Manifest

    manifest = Manifest.load(args.model)
    given = {
        f.name: getattr(args, f.name) for f in fields(Profile) if getattr(args, f.name) is not None
    }
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
