"""Building engines: the build options, the build plan, TensorRT's builder, and the cache-aware
entry points `build_engine` (one graph, always built) and `ensure_engines` (all three graphs,
reused from the cache where valid).

`plan_engines` is the only place that works out what a build means on this machine (recipe,
fitted profile, target, engine and timing-cache paths, and per graph its shapes and cache key);
both entry points build from its result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from mlvos.errors import InputError
from mlvos.fileio import atomic_write_bytes, file_lock
from mlvos.runtime.backends import cuda_mem
from mlvos.runtime.backends.trt.cache import (
    ENGINE_DIR,
    EngineRecord,
    Target,
    check_cached,
    current_target,
    engine_key,
    engine_paths,
    read_metadata,
    stored_profile,
    timing_cache_path,
    write_engine,
)
from mlvos.runtime.backends.trt.common import EngineCacheError, TrtError, _import_trt
from mlvos.runtime.backends.trt.plan import Profile, Recipe, profile_shapes, recipe_for
from mlvos.runtime.manifest import GraphInfo, Manifest
from mlvos.runtime.spec import Graph, Precision

# Named `log`, not `logger`: test_trt_api reads a `logger` as a TensorRT ILogger.
log = logging.getLogger(__name__)

# How long a build waits for another process building the same engine (large graphs take many
# minutes on a Jetson); it then reuses that engine.
BUILD_LOCK_TIMEOUT_S = 3600.0


# ------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class BuildOptions:
    """How engines are built and where they are cached (everything except graph and precision).

    Args:
        engine_dir: engine cache folder (None: <export dir>/engines).
        profile: dynamic-dim ranges (made legal with Profile.fitted); None reuses the profile of
            engines already in `engine_dir`, else the default Profile().
        timing_cache: "auto" (a per-GPU file in `engine_dir`), a path (read if present,
            rewritten after each build), or None.
        dla_core: build for this DLA core with GPU fallback (Jetson), or None for the GPU.
        fp16_recipe / tf32: see plan_recipe.
        workspace_mib: builder workspace limit (None: TensorRT's, the device memory).
        verbose: TensorRT's verbose log.
        device: CUDA device index.

    Progress lines go to the logger mlvos.runtime.backends.trt.build (INFO).
    """

    engine_dir: str | Path | None = None
    profile: Profile | None = None
    timing_cache: str | Path | None = "auto"
    dla_core: int | None = None
    fp16_recipe: str = "auto"
    tf32: bool = True
    workspace_mib: int | None = None
    verbose: bool = False
    device: int = 0

    @classmethod
    def merged(
        cls, options: BuildOptions | None, overrides: dict[str, Any], caller: str
    ) -> BuildOptions:
        """`options` (default BuildOptions()) with `overrides`, the option keywords that
        `caller` was given, applied.

        Raises:
            TypeError: a keyword that is not a BuildOptions field.
        """
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"{caller}() got unexpected keyword arguments {unknown}")
        return replace(options or cls(), **overrides)


# --------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class EnginePlan:
    """One graph's engine as planned: the ONNX it is parsed from, its profile shapes, its cache
    key and where it is (or will be) stored."""

    graph: str
    info: GraphInfo
    shapes: dict[str, list[list[int]]]
    key: dict[str, Any]
    path: Path
    meta_path: Path
    fp32_layers: tuple[str, ...] = ()  # flag path: ONNX nodes pinned to FP32 (see _constrain)


@dataclass(frozen=True)
class BuildPlan:
    """What building engines of one precision means on this machine."""

    recipe: Recipe
    target: Target
    profile: Profile  # fitted to the manifest
    engine_dir: Path
    timing_cache: Path | None
    engines: dict[str, EnginePlan]  # graph name -> plan, in the order given


def plan_engines(
    manifest: Manifest,
    precision: str,
    options: BuildOptions,
    graphs: tuple[str, ...] = Graph.ALL,
) -> BuildPlan:
    """Work out the recipe, profile, target, paths and cache key of each engine in `graphs`.

    Raises:
        NoCudaDeviceError / MissingDependencyError: no GPU, or tensorrt/cuda-python missing.
        InputError: an unknown precision or fp16 recipe, or a profile the runtime cannot run.
        ManifestError: a graph is missing from the manifest or its ONNX file does not match.
    """
    cuda_mem.require_device(options.device)  # before any TensorRT object exists
    trt = _import_trt()
    engine_dir = Path(options.engine_dir or manifest.root / ENGINE_DIR)
    target = current_target(trt, options.device)
    recipe = recipe_for(trt, precision, options.fp16_recipe, options.tf32)
    profile = options.profile
    if profile is None:
        profile = stored_profile(engine_dir, precision) or Profile()
    profile = profile.fitted(manifest)
    timing_cache = options.timing_cache
    if timing_cache == "auto":
        timing_cache = timing_cache_path(engine_dir, target)
    engines = {}
    for g in graphs:
        info = manifest.graph(g, recipe.source)  # verifies the ONNX file's sha256
        shapes = profile_shapes(info, profile, manifest.stride)
        if options.dla_core is not None:
            # DLA runs static shapes only: a fixed-size engine at the profile's maximum
            shapes = {name: [hi, hi, hi] for name, (_, _, hi) in shapes.items()}
        fp32_layers = _flag_path_fp32_nodes(manifest, g) if recipe.fp16_flag else ()
        key = engine_key(
            graph=info,
            precision=precision,
            recipe=recipe,
            target=target,
            profile=profile,
            shapes=shapes,
            dla_core=options.dla_core,
        )
        if fp32_layers:
            key["fp32_layers"] = list(fp32_layers)
        engines[g] = EnginePlan(
            g, info, shapes, key, *engine_paths(engine_dir, g, precision), fp32_layers
        )
    return BuildPlan(
        recipe,
        target,
        profile,
        engine_dir,
        Path(timing_cache) if timing_cache is not None else None,
        engines,
    )


def _flag_path_fp32_nodes(manifest: Manifest, graph: str) -> tuple[str, ...]:
    """The ONNX nodes that must stay FP32 when `graph` is built from its FP32 file with the FP16
    flag: those the export's FP16 conversion kept FP32 (manifest fp16 entry's fp32_nodes: the
    soft aggregation, Resize, overflowing nodes). The aggregation scope is added at build time."""
    entry = manifest.data["graphs"].get(graph, {}).get("fp16")
    if entry is None or "fp32_nodes" not in entry:
        raise InputError(
            f"building fp16 {graph} with BuilderFlag.FP16 (TensorRT < 10.12) pins the nodes the "
            "export's FP16 conversion kept FP32, but this export has no fp16 graphs; re-export "
            "with `mlvos export --precision fp32 fp16`, or build fp32"
        )
    return tuple(sorted(d["name"] if isinstance(d, dict) else str(d) for d in entry["fp32_nodes"]))


# Layers of the read_decoder's soft aggregation (export/wrappers.py names its nodes so).
AGGREGATE_SCOPE = "/aggregate/"


def _constrain(trt: Any, network: Any, config: Any, fp32_nodes: tuple[str, ...]) -> dict:
    """Flag path (FP32 graph + BuilderFlag.FP16, TensorRT < 10.12): run the layers of
    `fp32_nodes` and of the aggregation scope in FP32 with obeyed precision constraints, and
    carry the query features and the memory bank as FP16 I/O (Precision.HALF_IO), as the
    strongly typed FP16 graph does. Returns {"pinned": layer names, "missing": node names
    matching no layer, "half_io": tensor names}."""
    wanted = set(fp32_nodes)
    pinned, found = [], set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in wanted or AGGREGATE_SCOPE in layer.name:
            # trt-compat: precision 10.x only (weakly typed networks); the flag path is 10.x only
            layer.precision = trt.DataType.FLOAT
            for j in range(layer.num_outputs):
                # trt-compat: set_output_type 10.x only; the flag path is 10.x only
                layer.set_output_type(j, trt.DataType.FLOAT)
            pinned.append(layer.name)
            found.add(layer.name)
    # trt-compat: OBEY_PRECISION_CONSTRAINTS exists in 10.x only (flag path only)
    config.set_flag(getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS"))  # noqa: B009
    half_io = []
    for tensor in [*(network.get_input(i) for i in range(network.num_inputs)),
                   *(network.get_output(i) for i in range(network.num_outputs))]:
        if tensor.name in Precision.HALF_IO:
            tensor.dtype = trt.DataType.HALF
            half_io.append(tensor.name)
    missing = sorted(wanted - found)
    if missing:
        log.warning(f"  {len(missing)} FP32 node(s) of the export match no TensorRT layer by "
                    f"name and run at TensorRT's choice: {missing[:5]}")
    return {"pinned": pinned, "missing": missing, "half_io": sorted(half_io)}


# ------------------------------------------------------------------------------ TensorRT build
def _progress_monitor(trt: Any) -> Any:
    """An IProgressMonitor that logs the top two levels of build phases."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            if depth <= 1:
                log.info(f"  {'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return _Monitor()


def _load_timing_cache(trt: Any, config: Any, path: Path | None) -> None:
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    timing_cache = config.create_timing_cache(data)
    if data and (timing_cache is None or not config.set_timing_cache(timing_cache, False)):
        # Written by another device or TensorRT version: start afresh rather than mix.
        log.warning(f"  ignoring timing cache {path} (made for another GPU or TensorRT version)")
        timing_cache = config.create_timing_cache(b"")
        data = b""
    if not data and (timing_cache is None or not config.set_timing_cache(timing_cache, False)):
        raise TrtError("TensorRT refused an empty timing cache; pass timing_cache=None")


def _parse(trt: Any, builder: Any, logger: Any, info: GraphInfo, strongly_typed: bool):
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(info.path)):
        errors = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            errors.append(
                f"node {error.node()} {error.node_name()!r} "
                f"({error.node_operator()}): {error.desc()}"
            )
        raise TrtError(
            f"TensorRT's ONNX parser rejected {info.path}: {'; '.join(errors) or 'no details'}. "
            "Check the export with `mlvos export` validation (ops must be in TensorRT 10.3's set)"
        )
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    expected = [t.name for t in info.inputs]
    if sorted(names) != sorted(expected):
        raise TrtError(
            f"{info.path} inputs {sorted(names)} differ from the manifest's "
            f"{sorted(expected)}; re-export"
        )
    return network, parser


def build_serialized(
    info: GraphInfo,
    recipe: Recipe,
    shapes: dict[str, list[list[int]]],
    *,
    timing_cache: Path | None,
    options: BuildOptions,
    fp32_layers: tuple[str, ...] = (),
) -> bytes:
    """Parse `info`'s ONNX and build a serialized engine with one optimization profile.

    Args:
        timing_cache: the resolved timing-cache file (read if present, rewritten after the
            build), or None; `options.timing_cache` is not consulted.
        options: dla_core, workspace_mib, verbose and device are used.
        fp32_layers: flag path only: ONNX nodes to pin to FP32 (see _constrain).

    Raises:
        NoCudaDeviceError / MissingDependencyError: no GPU, or tensorrt/cuda-python missing.
        TrtError: parsing or building failed (TensorRT's own log is printed above).
    """
    dla_core = options.dla_core
    cuda_mem.require_device(options.device)  # before any TensorRT object exists
    cuda_mem.set_device(options.device)
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, info, recipe.strongly_typed)
    config = builder.create_builder_config()
    if not recipe.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if recipe.fp16_flag:
        # trt-compat: FP16 exists in 10.x only; plan_recipe takes this branch only where it does
        config.set_flag(getattr(trt.BuilderFlag, "FP16"))  # noqa: B009 - invisible to 11.x stubs
        constrained = _constrain(trt, network, config, fp32_layers)
        log.info(f"  {len(constrained['pinned'])} layer(s) pinned to FP32, FP16 I/O: "
                 f"{', '.join(constrained['half_io']) or 'none'}")
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    if dla_core is not None:
        if not 0 <= dla_core < builder.num_DLA_cores:
            raise InputError(
                f"DLA core {dla_core} requested but this device has "
                f"{builder.num_DLA_cores} DLA core(s)"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    if shapes:
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            trt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(trt_profile)
    _load_timing_cache(trt, config, timing_cache)
    monitor = _progress_monitor(trt)
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtError(
            f"TensorRT could not build an engine from {info.path} (see its log "
            "above); try --workspace-mib larger or another precision"
        )
    if timing_cache is not None:
        timing = config.get_timing_cache()
        atomic_write_bytes(timing_cache, bytes(memoryview(timing.serialize())))
    del parser, network, monitor
    return bytes(memoryview(serialized))


def _build(
    plan: BuildPlan, planned: EnginePlan, options: BuildOptions, *, reuse: bool = False
) -> EngineRecord:
    """Build the `planned` engine and write it and its metadata (atomically) to the cache,
    holding the engine's lock: processes building one engine take turns. With `reuse`, an
    engine that became valid while this one waited (another process built it) is taken as is.

    Raises:
        BusyError: another process held the engine's lock for BUILD_LOCK_TIMEOUT_S seconds.
    """
    what = f"the engine {planned.path}"
    with file_lock(planned.path, timeout=BUILD_LOCK_TIMEOUT_S, what=what):
        if reuse and not check_cached(planned.path, planned.key):
            log.info(f"  {planned.path.name}: built by another process meanwhile; reusing it")
            meta = read_metadata(planned.meta_path) or {}
            return EngineRecord(planned.graph, planned.path, meta, False)
        return _build_locked(plan, planned, options)


def _build_locked(plan: BuildPlan, planned: EnginePlan, options: BuildOptions) -> EngineRecord:
    recipe, precision = plan.recipe, planned.key["precision"]
    log.info(
        f"building {planned.path} (TensorRT {plan.target.tensorrt}, {precision} from the "
        f"{recipe.source} graph{', strongly typed' if recipe.strongly_typed else ''}"
        f"{', BuilderFlag.FP16' if recipe.fp16_flag else ''}; {plan.target.gpu})"
    )
    t0 = time.perf_counter()
    data = build_serialized(
        planned.info, recipe, planned.shapes, timing_cache=plan.timing_cache, options=options,
        fp32_layers=planned.fp32_layers,
    )
    seconds = time.perf_counter() - t0
    meta = write_engine(planned.path, planned.key, data, seconds)
    log.info(f"  wrote {planned.path.name} ({len(data) / 2**20:.1f} MiB) in {seconds:.0f} s")
    return EngineRecord(planned.graph, planned.path, meta, True)


# ------------------------------------------------------------------------------- entry points
def build_engine(
    manifest: Manifest,
    graph: str,
    precision: str,
    *,
    options: BuildOptions | None = None,
    **overrides: Any,
) -> EngineRecord:
    """Build one graph's engine (even if a valid one is cached) and write it, and its JSON
    metadata, atomically to the engine folder.

    Args:
        manifest: the export directory.
        graph: one of spec.Graph.ALL.
        precision: "fp16", "int8" or "fp32" (see the package docstring for the recipes).
        options: build options (default BuildOptions()).
        **overrides: BuildOptions fields given as keywords (engine_dir=..., profile=...); they
            replace those of `options`.
    """
    options = BuildOptions.merged(options, overrides, "build_engine")
    plan = plan_engines(manifest, precision, options, (graph,))
    return _build(plan, plan.engines[graph], options)


def ensure_engines(
    manifest: Manifest,
    precision: str,
    *,
    options: BuildOptions | None = None,
    allow_build: bool = True,
    rebuild: bool = False,
    **overrides: Any,
) -> dict[str, EngineRecord]:
    """Return usable engines for all three graphs, building the missing or stale ones.

    An engine is reused only if its metadata key (ONNX sha256, TensorRT version, GPU name and
    compute capability, platform, precision recipe, profile, DLA core) equals the current one and
    the engine file matches its recorded sha256.

    Args:
        options: build options (default BuildOptions()); its profile None reuses the profile of
            engines already in the engine folder (else the default Profile()).
        allow_build: if False, a missing/stale engine raises EngineCacheError instead.
        rebuild: build even if the cache is valid.
        **overrides: BuildOptions fields given as keywords (engine_dir=..., profile=...,
            timing_cache=...); they replace those of `options`.

    Raises:
        EngineCacheError: an engine is unusable and `allow_build` is False.
        BusyError: another process kept building one of the engines for BUILD_LOCK_TIMEOUT_S.
    """
    options = BuildOptions.merged(options, overrides, "ensure_engines")
    plan = plan_engines(manifest, precision, options)
    records: dict[str, EngineRecord] = {}
    for g, planned in plan.engines.items():
        reasons = ["--rebuild requested"] if rebuild else check_cached(planned.path, planned.key)
        if not reasons:
            meta = read_metadata(planned.meta_path) or {}
            records[g] = EngineRecord(g, planned.path, meta, False)
            continue
        if not allow_build:
            raise EngineCacheError(
                f"the cached {precision} engine for {g} in {plan.engine_dir} cannot be used: "
                f"{'; '.join(reasons)}. Build engines for this GPU with `mlvos engine --model "
                f"{manifest.root} --precision {precision}` (or allow building)"
            )
        log.info(f"{g}: (re)building because " + "; ".join(reasons))
        records[g] = _build(plan, planned, options, reuse=not rebuild)
    return records


def profile_for(
    manifest: Manifest,
    precision: str,
    sizes: list[tuple[int, int]],
    engine_dir: str | Path | None = None,
) -> Profile:
    """The profile to open engines with for frames of `sizes` ((height, width) as the network
    sees them, before padding): the cached engines' profile when it covers them all (no rebuild),
    else one that covers them and the cached (or default) range."""
    stored = stored_profile(Path(engine_dir or manifest.root / ENGINE_DIR), precision)
    base = stored or Profile()
    if all(base.covers(manifest, h, w) for h, w in sizes):
        return base
    return Profile.covering(sizes, base)
