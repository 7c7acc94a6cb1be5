"""TensorRT backend: engine build from the manifest's ONNX graphs, a checked engine cache, and
TrtRunner, which runs the three engines on one CUDA stream with the memory bank on the device.

Supported TensorRT: 10.3 (JetPack 6.1/6.2) to 11.x, through the name-based API only
(`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Every TensorRT attribute used here
exists in both 10.3 and 11.4, except those on lines marked `# trt-compat: NAME ...`, which sit
behind a version or feature guard; tests/runtime/test_trt_api.py checks this against the real API
dumps in shared/reference/tensorrt.

Precision recipes (see `plan_recipe`):
  fp32  the fp32 graph (strongly typed from TensorRT 10.12 on).
  fp16  the manifest's strongly typed fp16 graph with NetworkDefinitionCreationFlag.STRONGLY_TYPED
        (TensorRT >= 10.12, where strong typing is complete, and 11.x, where it is the only
        mode); on older 10.x (JetPack 6's 10.3) the fp32 graph with BuilderFlag.FP16.
  int8  the manifest's Q/DQ graph, strongly typed (explicit quantization; TensorRT 11 has no
        calibrator API).

TensorRT and cuda-python are imported inside functions only, and no TensorRT Builder or Runtime
is created before `cuda_mem.require_device` has confirmed a CUDA device: without one, TensorRT's
Runtime object segfaults on first use instead of raising.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import InputError, MlvosError, require
from mlvos.fileio import atomic_write_bytes, atomic_write_text
from mlvos.runtime.backends import cuda_mem
from mlvos.runtime.backends.base import Runner
from mlvos.runtime.backends.cuda_mem import DeviceArray, DeviceBuffer, Stream
from mlvos.runtime.manifest import GraphInfo, Manifest, sha256_file
from mlvos.runtime.spec import MAX_OBJECT_ID, MIN_SIDE, Graph, Tensor, padded_size

PRECISIONS: tuple[str, ...] = ("fp16", "int8", "fp32")
FP16_RECIPES: tuple[str, ...] = ("auto", "strong", "flag")
ENGINE_FORMAT = "mlvos-trt-engine"
ENGINE_FORMAT_VERSION = 1
ENGINE_DIR = "engines"
# Strong typing covers every layer from 10.12 on (NVIDIA's strong-typing migration notes).
STRONG_TYPING_COMPLETE = (10, 12)


class TrtError(MlvosError):
    """Building, loading or running a TensorRT engine failed."""


class EngineCacheError(TrtError):
    """A cached engine is missing, stale or foreign and building was not allowed."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _import_trt() -> Any:
    return require("tensorrt", "trt", "the TensorRT backend")


def version_tuple(version: str) -> tuple[int, ...]:
    """Parse a version string: "10.3.0.26" -> (10, 3, 0, 26); a non-numeric part ends it."""
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


# ----------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """Optimization profile: ranges of the dynamic dims O (objects) and H, W (padded frame size).

    Minimums are fixed: 1 object and the smallest legal frame (MIN_SIDE padded to the stride).
    Heights and widths are rounded up to the stride by `fitted`; T (capacity) is static.
    """

    max_objects: int = 6
    opt_objects: int = 2
    max_height: int = 720
    max_width: int = 1280
    opt_height: int = 480
    opt_width: int = 864

    def fitted(self, manifest: Manifest) -> Profile:
        """This profile made legal for `manifest`: sizes padded to the stride (or pinned to a
        static export size), optimum clamped into [min, max].

        Raises:
            InputError: an object count or size outside what the runtime supports.
        """
        if not 1 <= self.max_objects <= MAX_OBJECT_ID:
            raise InputError(f"max objects must be in 1..{MAX_OBJECT_ID}, got {self.max_objects}")
        if self.opt_objects < 1:
            raise InputError(f"opt objects must be >= 1, got {self.opt_objects}")
        static = manifest.static_size
        if static is not None:
            h, w = static
            return replace(
                self,
                opt_objects=min(self.opt_objects, self.max_objects),
                max_height=h,
                max_width=w,
                opt_height=h,
                opt_width=w,
            )
        stride = manifest.stride
        for name in ("max_height", "max_width", "opt_height", "opt_width"):
            if getattr(self, name) < MIN_SIDE:
                raise InputError(
                    f"{name.replace('_', ' ')} must be >= {MIN_SIDE}, got {getattr(self, name)}"
                )
        max_h, max_w = padded_size(self.max_height, self.max_width, stride)
        opt_h, opt_w = padded_size(self.opt_height, self.opt_width, stride)
        return replace(
            self,
            opt_objects=min(self.opt_objects, self.max_objects),
            max_height=max_h,
            max_width=max_w,
            opt_height=min(opt_h, max_h),
            opt_width=min(opt_w, max_w),
        )

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown profile keys {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()})


def resolve_shape(shape: tuple[int | str, ...], env: dict[str, int]) -> list[int]:
    """Concrete dims of a manifest shape: ints stay, "O"/"H"/"W" and "H/16"-style fractions are
    looked up in `env`."""
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
            continue
        base, _, div = str(d).partition("/")
        if base not in env or (div and not div.isdigit()):
            raise TrtError(f"cannot resolve dim {d!r} of shape {shape} (known: {sorted(env)})")
        out.append(env[base] // int(div) if div else env[base])
    return out


def min_side(stride: int) -> int:
    return padded_size(MIN_SIDE, MIN_SIDE, stride)[0]


def profile_shapes(info: GraphInfo, profile: Profile, stride: int) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max] shape} for every input of `info` with a dynamic dim."""
    lo = min_side(stride)
    envs = (
        {"O": 1, "H": lo, "W": lo},
        {"O": profile.opt_objects, "H": profile.opt_height, "W": profile.opt_width},
        {"O": profile.max_objects, "H": profile.max_height, "W": profile.max_width},
    )
    return {
        t.name: [resolve_shape(t.shape, env) for env in envs]
        for t in info.inputs
        if any(not isinstance(d, int) for d in t.shape)
    }


# ------------------------------------------------------------------------------------ recipes
@dataclass(frozen=True)
class Recipe:
    """How an engine of a given precision is built.

    source: which ONNX graph of the manifest is parsed ("fp32", "fp16", "int8").
    strongly_typed: create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED.
    fp16_flag: set BuilderFlag.FP16 (weak typing; TensorRT 10.x only).
    tf32: allow TF32 for FP32 math (TensorRT's default; off for exact FP32 parity checks).
    """

    source: str
    strongly_typed: bool
    fp16_flag: bool = False
    tf32: bool = True


def plan_recipe(
    precision: str,
    trt_version: str,
    has_fp16_flag: bool,
    fp16_recipe: str = "auto",
    tf32: bool = True,
) -> Recipe:
    """Pick the build recipe for `precision` on a TensorRT version.

    Args:
        precision: "fp32", "fp16" or "int8".
        trt_version: tensorrt.__version__.
        has_fp16_flag: whether tensorrt.BuilderFlag has FP16 (removed in 11).
        fp16_recipe: "auto"; "strong" forces the strongly typed fp16 graph (also on 10.3);
            "flag" forces fp32 graph + BuilderFlag.FP16 (only where the flag exists).
        tf32: allow TF32 for FP32 math.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if fp16_recipe not in FP16_RECIPES:
        raise InputError(f"unknown fp16 recipe {fp16_recipe!r}; choose one of {FP16_RECIPES}")
    complete = version_tuple(trt_version)[:2] >= STRONG_TYPING_COMPLETE
    if precision == "int8":
        return Recipe("int8", True, tf32=tf32)
    if precision == "fp32":
        return Recipe("fp32", complete, tf32=tf32)
    if fp16_recipe == "flag" and not has_fp16_flag:
        raise InputError(
            f"TensorRT {trt_version} has no BuilderFlag.FP16 (removed in 11); use the strongly "
            "typed fp16 graph (--fp16-recipe auto or strong)"
        )
    if fp16_recipe == "strong" or (fp16_recipe == "auto" and (complete or not has_fp16_flag)):
        return Recipe("fp16", True, tf32=tf32)
    return Recipe("fp32", False, fp16_flag=True, tf32=tf32)


def recipe_for(trt: Any, precision: str, fp16_recipe: str = "auto", tf32: bool = True) -> Recipe:
    """plan_recipe for the imported TensorRT module."""
    return plan_recipe(
        precision,
        trt.__version__,
        # trt-compat: FP16 feature probe (the flag is absent in 11.x)
        hasattr(trt.BuilderFlag, "FP16"),
        fp16_recipe,
        tf32,
    )


# -------------------------------------------------------------------------------- engine cache
@dataclass(frozen=True)
class Target:
    """What a serialized engine is specific to, besides its network and settings."""

    tensorrt: str
    gpu: str
    compute_capability: str
    platform: str


def current_target(trt: Any, device: int = 0) -> Target:
    info = cuda_mem.device_info(device)
    return Target(trt.__version__, info.name, info.compute_capability, platform.machine())


def engine_key(
    *,
    graph: GraphInfo,
    precision: str,
    recipe: Recipe,
    target: Target,
    profile: Profile,
    shapes: dict[str, list[list[int]]],
    dla_core: int | None,
) -> dict[str, Any]:
    """The cache key of one engine as plain JSON data; any difference means "rebuild"."""
    key = {
        "graph": graph.name,
        "precision": precision,
        "onnx_sha256": graph.sha256,
        "recipe": asdict(recipe),
        **asdict(target),
        "profile": asdict(profile),
        "shapes": shapes,
        "dla_core": dla_core,
    }
    return json.loads(json.dumps(key))  # tuples -> lists, so it compares equal to a loaded key


def key_mismatches(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Human-readable differences between two engine keys (empty if they match)."""
    out = []
    for k in sorted(set(expected) | set(found)):
        if expected.get(k) != found.get(k):
            out.append(f"{k}: cached {found.get(k)!r}, needed {expected.get(k)!r}")
    return out


def engine_paths(engine_dir: Path, graph: str, precision: str) -> tuple[Path, Path]:
    """(engine file, its JSON metadata) inside `engine_dir`."""
    path = Path(engine_dir) / f"{graph}.{precision}.engine"
    return path, path.with_name(path.name + ".json")


def read_metadata(meta_path: Path) -> dict[str, Any] | None:
    """The engine metadata at `meta_path`, or None if missing, unreadable or of another format."""
    try:
        meta = json.loads(Path(meta_path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != ENGINE_FORMAT:
        return None
    return meta


def check_cached(engine_path: Path, expected: dict[str, Any]) -> list[str]:
    """Reasons why the engine at `engine_path` must not be used for `expected` (empty = usable).

    The engine file's sha256 is checked against its metadata, so a truncated or replaced file is
    never handed to TensorRT's deserializer.
    """
    meta_path = engine_path.with_name(engine_path.name + ".json")
    if not engine_path.is_file():
        return [f"{engine_path.name} does not exist"]
    meta = read_metadata(meta_path)
    if meta is None:
        return [f"{meta_path.name} is missing or not {ENGINE_FORMAT} metadata"]
    if meta.get("version") != ENGINE_FORMAT_VERSION:
        return [f"metadata version {meta.get('version')} != {ENGINE_FORMAT_VERSION}"]
    reasons = key_mismatches(expected, meta.get("key") or {})
    if reasons:
        return reasons
    digest = sha256_file(engine_path)
    if digest != meta.get("engine_sha256"):
        return [
            f"{engine_path.name} does not match its metadata (sha256 {digest[:12]}...): "
            "the file was modified or truncated"
        ]
    return []


def timing_cache_path(engine_dir: Path, target: Target) -> Path:
    """Default timing-cache file: one per TensorRT version and GPU, beside the engines."""
    tag = re.sub(
        r"[^A-Za-z0-9.]+", "-", f"{target.tensorrt}-{target.gpu}-sm{target.compute_capability}"
    )
    return Path(engine_dir) / f"timing-{tag.strip('-')}.cache"


@dataclass(frozen=True)
class EngineRecord:
    graph: str
    path: Path
    meta: dict[str, Any]
    built: bool  # False: reused from the cache


# ----------------------------------------------------------------------------------- building
def _progress_monitor(trt: Any, log) -> Any:
    """An IProgressMonitor that prints the top two levels of build phases."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            if depth <= 1:
                log(f"  {'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return _Monitor()


def _load_timing_cache(trt: Any, config: Any, path: Path | None, log) -> None:
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    timing_cache = config.create_timing_cache(data)
    if data and (timing_cache is None or not config.set_timing_cache(timing_cache, False)):
        # Written by another device or TensorRT version: start afresh rather than mix.
        log(f"  ignoring timing cache {path} (made for another GPU or TensorRT version)")
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
    dla_core: int | None = None,
    workspace_mib: int | None = None,
    verbose: bool = False,
    device: int = 0,
    log=_stderr,
) -> bytes:
    """Parse `info`'s ONNX and build a serialized engine with one optimization profile.

    Raises:
        NoCudaDeviceError / MissingDependencyError: no GPU, or tensorrt/cuda-python missing.
        TrtError: parsing or building failed (TensorRT's own log is printed above).
    """
    cuda_mem.require_device(device)  # before any TensorRT object exists
    cuda_mem.set_device(device)
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, info, recipe.strongly_typed)
    config = builder.create_builder_config()
    if not recipe.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if recipe.fp16_flag:
        # trt-compat: FP16 exists in 10.x only; plan_recipe takes this branch only where it does
        config.set_flag(getattr(trt.BuilderFlag, "FP16"))  # noqa: B009 - invisible to 11.x stubs
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
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
    _load_timing_cache(trt, config, timing_cache, log)
    monitor = _progress_monitor(trt, log)
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


def build_engine(
    manifest: Manifest,
    graph: str,
    precision: str,
    *,
    profile: Profile,
    timing_cache: Path | None,
    dla_core: int | None = None,
    engine_dir: Path | None = None,
    fp16_recipe: str = "auto",
    tf32: bool = True,
    workspace_mib: int | None = None,
    verbose: bool = False,
    device: int = 0,
    log=_stderr,
) -> EngineRecord:
    """Build one graph's engine and write it (and its JSON metadata) atomically to `engine_dir`.

    Args:
        manifest: the export directory.
        graph: one of spec.Graph.ALL.
        precision: "fp16", "int8" or "fp32" (see module docstring for the recipes).
        profile: dynamic-dim ranges (made legal with Profile.fitted).
        timing_cache: persistent timing-cache file (read if present, rewritten after the build),
            or None.
        dla_core: build for this DLA core with GPU fallback (Jetson), or None for the GPU.
        engine_dir: output folder (default: <export dir>/engines).
        fp16_recipe / tf32: see plan_recipe.
        workspace_mib: builder workspace limit (default: TensorRT's, the device memory).
    """
    cuda_mem.require_device(device)
    trt = _import_trt()
    recipe = recipe_for(trt, precision, fp16_recipe, tf32)
    info = manifest.graph(graph, recipe.source)  # verifies the ONNX file's sha256
    profile = profile.fitted(manifest)
    shapes = profile_shapes(info, profile, manifest.stride)
    key = engine_key(
        graph=info,
        precision=precision,
        recipe=recipe,
        target=current_target(trt, device),
        profile=profile,
        shapes=shapes,
        dla_core=dla_core,
    )
    engine_dir = Path(engine_dir or manifest.root / ENGINE_DIR)
    engine_path, meta_path = engine_paths(engine_dir, graph, precision)
    log(
        f"building {engine_path} (TensorRT {trt.__version__}, {precision} from the "
        f"{recipe.source} graph{', strongly typed' if recipe.strongly_typed else ''}"
        f"{', BuilderFlag.FP16' if recipe.fp16_flag else ''}; {key['gpu']})"
    )
    t0 = time.perf_counter()
    data = build_serialized(
        info,
        recipe,
        shapes,
        timing_cache=timing_cache,
        dla_core=dla_core,
        workspace_mib=workspace_mib,
        verbose=verbose,
        device=device,
        log=log,
    )
    seconds = time.perf_counter() - t0
    atomic_write_bytes(engine_path, data)
    meta = {
        "format": ENGINE_FORMAT,
        "version": ENGINE_FORMAT_VERSION,
        "key": key,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data),
        "build_seconds": round(seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    log(f"  wrote {engine_path.name} ({len(data) / 2**20:.1f} MiB) in {seconds:.0f} s")
    return EngineRecord(graph, engine_path, meta, True)


def _stored_profile(engine_dir: Path, precision: str) -> Profile | None:
    """The profile of an existing engine of this precision (so a runner reuses what
    `mlvos engine` built), or None."""
    for g in Graph.ALL:
        meta = read_metadata(engine_paths(engine_dir, g, precision)[1])
        try:
            return Profile.from_dict(meta["key"]["profile"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError, InputError):
            continue
    return None


def ensure_engines(
    manifest: Manifest,
    precision: str,
    *,
    engine_dir: str | Path | None = None,
    profile: Profile | None = None,
    allow_build: bool = True,
    rebuild: bool = False,
    dla_core: int | None = None,
    timing_cache: str | Path | None = "auto",
    fp16_recipe: str = "auto",
    tf32: bool = True,
    workspace_mib: int | None = None,
    verbose: bool = False,
    device: int = 0,
    log=_stderr,
) -> dict[str, EngineRecord]:
    """Return usable engines for all three graphs, building the missing or stale ones.

    An engine is reused only if its metadata key (ONNX sha256, TensorRT version, GPU name and
    compute capability, platform, precision recipe, profile, DLA core) equals the current one and
    the engine file matches its recorded sha256.

    Args:
        profile: dynamic-dim ranges; None reuses the profile of engines already in `engine_dir`
            (else the default Profile()).
        allow_build: if False, a missing/stale engine raises EngineCacheError instead.
        rebuild: build even if the cache is valid.
        timing_cache: "auto" (a per-GPU file in `engine_dir`), a path, or None.

    Raises:
        EngineCacheError: an engine is unusable and `allow_build` is False.
    """
    cuda_mem.require_device(device)
    trt = _import_trt()
    engine_dir = Path(engine_dir or manifest.root / ENGINE_DIR)
    target = current_target(trt, device)
    recipe = recipe_for(trt, precision, fp16_recipe, tf32)
    if profile is None:
        profile = _stored_profile(engine_dir, precision) or Profile()
    profile = profile.fitted(manifest)
    if timing_cache == "auto":
        timing_cache = timing_cache_path(engine_dir, target)
    timing_cache = Path(timing_cache) if timing_cache is not None else None
    records: dict[str, EngineRecord] = {}
    for g in Graph.ALL:
        info = manifest.graph(g, recipe.source)
        shapes = profile_shapes(info, profile, manifest.stride)
        key = engine_key(
            graph=info,
            precision=precision,
            recipe=recipe,
            target=target,
            profile=profile,
            shapes=shapes,
            dla_core=dla_core,
        )
        engine_path, meta_path = engine_paths(engine_dir, g, precision)
        reasons = ["--rebuild requested"] if rebuild else check_cached(engine_path, key)
        if not reasons:
            records[g] = EngineRecord(g, engine_path, read_metadata(meta_path) or {}, False)
            continue
        if not allow_build:
            raise EngineCacheError(
                f"the cached {precision} engine for {g} in {engine_dir} cannot be used: "
                f"{'; '.join(reasons)}. Build engines for this GPU with `mlvos engine --model "
                f"{manifest.root} --precision {precision}` (or allow building)"
            )
        log(f"{g}: (re)building because " + "; ".join(reasons))
        records[g] = build_engine(
            manifest,
            g,
            precision,
            profile=profile,
            timing_cache=timing_cache,
            dla_core=dla_core,
            engine_dir=engine_dir,
            fp16_recipe=fp16_recipe,
            tf32=tf32,
            workspace_mib=workspace_mib,
            verbose=verbose,
            device=device,
            log=log,
        )
    return records


# ------------------------------------------------------------------------------------- runner
class _Stage:
    """One graph's engine and execution context, with the I/O shapes last set on it."""

    def __init__(self, name: str, engine: Any, context: Any, io: dict[str, bool]):
        self.name = name
        self.engine = engine
        self.context = context
        self.io = io  # tensor name -> is an input
        self.outputs = [n for n, is_input in io.items() if not is_input]
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.out_shapes: dict[str, tuple[int, ...]] = {}

    def set_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """set_input_shape for the inputs whose shape changed; refresh the output shapes."""
        changed = False
        for name, shape in shapes.items():
            if self.shapes.get(name) != shape:
                if not self.context.set_input_shape(name, shape):
                    raise InputError(
                        f"{self.name}: input {name} shape {shape} is outside the engine's "
                        f"profile; rebuild with `mlvos engine` and larger --max-* values"
                    )
                self.shapes[name] = shape
                changed = True
        if changed or not self.out_shapes:
            self.out_shapes = {
                name: tuple(self.context.get_tensor_shape(name)) for name in self.outputs
            }

    def enqueue(self, stream: Stream) -> bool:
        return bool(self.context.execute_async_v3(stream.handle))


class TrtRunner(Runner):
    """Runner on TensorRT engines (built or reused through `ensure_engines`).

    Device memory (cuda-python): every I/O tensor has one buffer preallocated at the profile's
    maximum shape, shared by name between the graphs (the frame feeds both encoders; the query
    encoder's outputs are the read decoder's inputs). The bank (O_max, T, C, h, w) lives on the
    device and is written in place; per frame only the frame goes up and only the label map comes
    back. The three engines run on one CUDA stream and share one scratch allocation.

    Args:
        manifest: the export directory's manifest.
        precision: "fp16" (default), "int8" or "fp32".
        engine_dir: engine cache folder (default: <export dir>/engines).
        profile: dynamic-dim ranges for engines built here (None: reuse the cached ones').
        allow_build: build missing or stale engines (minutes); False raises EngineCacheError.
        cuda_graph: capture read_decode in a CUDA graph per (objects, H, W) and replay it.
        dla_core: run on this DLA core (Jetson) with GPU fallback.
        device: CUDA device index.
        fp16_recipe / tf32: see plan_recipe.

    Raises:
        MissingDependencyError: tensorrt or cuda-python is not installed.
        NoCudaDeviceError: no usable CUDA device.
        EngineCacheError: stale engines and allow_build=False.
    """

    name = "trt"

    def __init__(
        self,
        manifest: Manifest,
        precision: str = "fp16",
        *,
        engine_dir: str | Path | None = None,
        profile: Profile | None = None,
        allow_build: bool = True,
        rebuild: bool = False,
        cuda_graph: bool = False,
        dla_core: int | None = None,
        device: int = 0,
        fp16_recipe: str = "auto",
        tf32: bool = True,
        log=_stderr,
    ):
        cuda_mem.require_device(device)  # first: TensorRT must not start without a GPU
        self.manifest = manifest
        self.precision = precision
        self.stride = manifest.stride
        self.capacity = manifest.capacity
        self.device = device
        self.dla_core = dla_core
        self.cuda_graph = cuda_graph
        self.log = log
        self.records = ensure_engines(
            manifest,
            precision,
            engine_dir=engine_dir,
            profile=profile,
            allow_build=allow_build,
            rebuild=rebuild,
            dla_core=dla_core,
            device=device,
            fp16_recipe=fp16_recipe,
            tf32=tf32,
            log=log,
        )
        source = self.records[Graph.READ_DECODER].meta["key"]["recipe"]["source"]
        self.bank_shape = (
            manifest.graph(Graph.READ_DECODER, source, verify=False).input(Tensor.BANK_KEY).shape
        )
        # Engine limits, known before open() (the predictor reads max_objects); open() re-reads
        # them from the deserialized engines.
        profile_used = self.records[Graph.READ_DECODER].meta["key"]["profile"]
        self.max_objects = int(profile_used["max_objects"])
        self.max_size = (int(profile_used["max_height"]), int(profile_used["max_width"]))
        self._opened = False

    # ------------------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if self._opened:
            return
        cuda_mem.set_device(self.device)
        trt = _import_trt()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # safe: the constructor checked the device
        if self.dla_core is not None:
            self._runtime.DLA_core = self.dla_core
        self._stages: dict[str, _Stage] = {}
        self._buffers: dict[str, DeviceBuffer] = {}
        self._graph: cuda_mem.CudaGraph | None = None
        self._graph_key: tuple | None = None
        self._graph_failed = False
        self._stream = Stream()
        self._opened = True
        try:
            self._load_engines()
            self._allocate()
        except BaseException:
            self.close()
            raise

    def _load_engines(self) -> None:
        runtime = self._runtime
        trt = self._trt
        for g in Graph.ALL:
            record = self.records[g]
            data = record.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != record.meta.get("engine_sha256"):
                raise EngineCacheError(f"{record.path} changed since it was checked; rebuild it")
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise TrtError(
                    f"TensorRT could not deserialize {record.path} (see its log "
                    f"above); rebuild it with `mlvos engine --rebuild`"
                )
            # USER_MANAGED: the three contexts run one after another on one stream, so they
            # share one scratch allocation (set in _allocate) instead of one each.
            context = engine.create_execution_context(
                trt.ExecutionContextAllocationStrategy.USER_MANAGED
            )
            if context is None:
                raise TrtError(f"could not create an execution context for {record.path}")
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            io = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
            self._stages[g] = _Stage(g, engine, context, io)

    def _max_shapes(self, stage: _Stage) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Largest shape (profile max) and numpy dtype of every I/O tensor of `stage`."""
        engine = stage.engine
        out = {}
        maxima = {}
        for name, is_input in stage.io.items():
            if is_input:
                shape = tuple(engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    shape = tuple(engine.get_tensor_profile_shape(name, 0)[2])
                maxima[name] = shape
        stage.set_shapes(maxima)
        for name in stage.io:
            shape = maxima.get(name) or stage.out_shapes[name]
            dtype = np.dtype(self._trt.nptype(engine.get_tensor_dtype(name)))
            out[name] = (shape, dtype)
        return out

    def _allocate(self) -> None:
        sizes: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.max_shapes: dict[str, tuple[int, ...]] = {}
        for stage in self._stages.values():
            for name, (shape, dtype) in self._max_shapes(stage).items():
                if name in self.dtypes and self.dtypes[name] != dtype:
                    raise TrtError(
                        f"tensor {name} is {self.dtypes[name]} in one engine and "
                        f"{dtype} in another; rebuild all engines of this precision"
                    )
                self.dtypes[name] = dtype
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if nbytes >= sizes.get(name, -1):
                    sizes[name], self.max_shapes[name] = nbytes, shape
        needed = (
            Tensor.FRAME,
            Tensor.PROBS,
            Tensor.QUERY_KEY,
            Tensor.MEM_KEY,
            Tensor.MEM_VALUE,
            Tensor.BANK_KEY,
            Tensor.BANK_VALUE,
            Tensor.BANK_VALID,
            Tensor.OBJ_PROBS,
            Tensor.LABELS,
        )
        missing = [n for n in needed if n not in self.dtypes]
        if missing:
            raise TrtError(f"the engines have no tensors {missing}; re-export and rebuild")
        for key, bank in ((Tensor.MEM_KEY, Tensor.BANK_KEY), (Tensor.MEM_VALUE, Tensor.BANK_VALUE)):
            if self.dtypes[key] != self.dtypes[bank]:
                raise TrtError(
                    f"{key} is {self.dtypes[key]} but {bank} is {self.dtypes[bank]}; "
                    "the memory encoder and read decoder engines do not match"
                )
        for name, nbytes in sizes.items():
            self._buffers[name] = DeviceBuffer(nbytes, name)
        scratch = max(int(s.engine.device_memory_size_v2) for s in self._stages.values())
        self._buffers["<scratch>"] = DeviceBuffer(scratch, "TensorRT scratch")
        for stage in self._stages.values():
            stage.context.set_device_memory(self._buffers["<scratch>"].ptr, scratch)
            for name in stage.io:
                self._bind(stage, name, self._buffers[name].ptr)
        frame = self.max_shapes[Tensor.FRAME]
        self.max_size = (int(frame[-2]), int(frame[-1]))
        self.max_objects = int(self.max_shapes[Tensor.BANK_KEY][0])
        self._bank_hw: tuple[int, int] = (0, 0)  # (h, w) of the bank; (0, 0) = none yet
        self._bank_objects = 0

    @staticmethod
    def _bind(stage: _Stage, name: str, ptr: int) -> None:
        if not stage.context.set_tensor_address(name, ptr):
            raise TrtError(f"{stage.name}: TensorRT rejected the address of {name}")

    def close(self) -> None:
        if not self._opened:
            return
        try:
            if self._stream.handle:
                self._stream.synchronize()
        finally:
            if self._graph is not None:
                self._graph.destroy()
                self._graph = None
            # Contexts before engines before the runtime, then the memory they used.
            for stage in self._stages.values():
                del stage.context, stage.engine
            self._stages = {}
            del self._runtime
            for buf in self._buffers.values():
                buf.free()
            self._buffers = {}
            self._stream.destroy()
            self._opened = False

    def synchronize(self) -> None:
        if self._opened:
            self._stream.synchronize()

    def _ready(self) -> None:
        if not self._opened:
            self.open()

    # ------------------------------------------------------------------------------ transfers
    def upload(self, array: np.ndarray) -> DeviceArray:
        """Frames (1, 3, H, W) go to the frame buffer, probabilities (O, H, W) to the probs
        buffer (both preallocated at the profile's maximum)."""
        self._ready()
        array = np.asarray(array)
        name = {4: Tensor.FRAME, 3: Tensor.PROBS}.get(array.ndim)
        if name is None:
            raise InputError(
                f"upload expects a (1, 3, H, W) frame or (O, H, W) probabilities, "
                f"got shape {array.shape}"
            )
        host = np.ascontiguousarray(array, dtype=self.dtypes[name])
        self._check_fits(name, host.shape)
        buf = self._buffers[name]
        cuda_mem.copy_htod(buf.ptr, host, self._stream)
        return DeviceArray(buf.ptr, host.shape, host.dtype)

    def _check_fits(self, name: str, shape: tuple[int, ...]) -> None:
        limit = self.max_shapes[name]
        if len(shape) != len(limit) or any(s > m for s, m in zip(shape, limit)):
            raise InputError(
                f"{name} of shape {tuple(shape)} exceeds the engine's maximum {tuple(limit)} "
                f"(frames up to {self.max_size[0]}x{self.max_size[1]} padded, {self.max_objects} "
                "objects); rebuild with `mlvos engine --max-height/--max-width/--max-objects`, "
                "or shrink frames with the predictor's max_side"
            )

    def download(self, value: DeviceArray) -> np.ndarray:
        self._ready()
        host = np.empty(value.shape, value.dtype)
        cuda_mem.copy_dtoh(host, value.ptr, self._stream)
        return host

    # ------------------------------------------------------------------------------ graphs
    def _outputs(self, stage: _Stage) -> dict[str, DeviceArray]:
        return {
            n: DeviceArray(self._buffers[n].ptr, s, self.dtypes[n])
            for n, s in stage.out_shapes.items()
        }

    def _run(self, stage: _Stage) -> None:
        if not stage.enqueue(self._stream):
            raise TrtError(f"{stage.name}: execute_async_v3 failed (see TensorRT's log above)")

    def encode_query(self, frame: DeviceArray) -> dict[str, DeviceArray]:
        self._ready()
        stage = self._stages[Graph.QUERY_ENCODER]
        stage.set_shapes({Tensor.FRAME: frame.shape})
        self._bind(stage, Tensor.FRAME, frame.ptr)
        self._run(stage)
        return self._outputs(stage)

    def encode_memory(
        self, frame: DeviceArray, probs: DeviceArray, query: dict | None = None
    ) -> tuple[DeviceArray, DeviceArray]:
        self._ready()
        stage = self._stages[Graph.MEMORY_ENCODER]
        if probs.dtype != self.dtypes[Tensor.PROBS]:
            probs = self.upload(self.download(probs))  # rare: casts on the host
        shapes = {Tensor.FRAME: frame.shape, Tensor.PROBS: probs.shape}
        if stage.io.get(Tensor.QUERY_KEY):  # shared-key model: memory keys are query keys
            if query is None:
                query = self.encode_query(frame)
            shapes[Tensor.QUERY_KEY] = tuple(query[Tensor.QUERY_KEY].shape)
            self._bind(stage, Tensor.QUERY_KEY, query[Tensor.QUERY_KEY].ptr)
        stage.set_shapes(shapes)
        self._bind(stage, Tensor.FRAME, frame.ptr)
        self._bind(stage, Tensor.PROBS, probs.ptr)
        self._run(stage)
        out = self._outputs(stage)
        return out[Tensor.MEM_KEY], out[Tensor.MEM_VALUE]

    def read_decode(
        self, query: dict[str, DeviceArray], objects: int
    ) -> tuple[DeviceArray, DeviceArray]:
        self._ready()
        self._check_objects(objects)
        stage = self._stages[Graph.READ_DECODER]
        hw = tuple(query[Tensor.QUERY_KEY].shape[-2:])
        if self._bank_hw != hw or objects > self._bank_objects:
            raise InputError(
                f"the bank holds {self._bank_objects} objects at {self._bank_hw}, "
                f"but {objects} objects at {hw} were read; call allocate_bank first"
            )
        shapes = {n: tuple(a.shape) for n, a in query.items()}
        shapes[Tensor.BANK_KEY] = (objects, *self.max_shapes[Tensor.BANK_KEY][1:3], *hw)
        shapes[Tensor.BANK_VALUE] = (objects, *self.max_shapes[Tensor.BANK_VALUE][1:3], *hw)
        shapes[Tensor.BANK_VALID] = (objects, self.capacity)
        fixed = all(a.ptr == self._buffers[n].ptr for n, a in query.items())
        key = tuple(sorted(shapes.items()))
        if self.cuda_graph and fixed and self._graph is not None and key == self._graph_key:
            self._graph.launch(self._stream)
        else:
            self._drop_graph()
            stage.set_shapes(shapes)
            for n, a in query.items():
                self._bind(stage, n, a.ptr)
            self._run(stage)  # also the warm-up TensorRT needs before a capture
            if self.cuda_graph and fixed and not self._graph_failed:
                self._capture(stage, key)
        out = self._outputs(stage)
        return out[Tensor.OBJ_PROBS], out[Tensor.LABELS]

    def _capture(self, stage: _Stage, key: tuple) -> None:
        graph = cuda_mem.CudaGraph.capture(self._stream, lambda: stage.enqueue(self._stream))
        if graph is None:
            self._graph_failed = True
            self.log("read_decoder refused CUDA-graph capture; running it without graphs")
            return
        self._graph, self._graph_key = graph, key

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self._graph.destroy()
        self._graph, self._graph_key = None, None

    # ------------------------------------------------------------------------------ bank
    def _check_objects(self, objects: int) -> None:
        if not 1 <= objects <= self.max_objects:
            raise InputError(
                f"{objects} objects requested but these engines support 1..{self.max_objects}; "
                f"rebuild them with `mlvos engine --max-objects {max(objects, 1)}`"
            )

    def _bank_hw_for(self, height: int, width: int) -> tuple[int, int]:
        dims = resolve_shape(self.bank_shape, {"O": 1, "H": height, "W": width})
        return int(dims[-2]), int(dims[-1])

    def _object_bytes(self, name: str) -> int:
        """Bytes of one object's (T, C, h, w) block at the current bank size."""
        t, c = self.max_shapes[name][1:3]
        h, w = self._bank_hw
        return t * c * h * w * self.dtypes[name].itemsize

    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        self._ready()
        self._check_fits(Tensor.FRAME, (1, 3, height, width))
        # The predictor may ask for more objects than it uses (it grows by doubling); the device
        # bank is preallocated for the engine's maximum, so only that many can exist.
        n = min(max_objects, self.max_objects)
        hw = self._bank_hw_for(height, width)
        start = 0 if hw != self._bank_hw else min(self._bank_objects, n)
        self._bank_hw = hw
        if n > start:
            for name in (Tensor.BANK_KEY, Tensor.BANK_VALUE):
                size = self._object_bytes(name)
                cuda_mem.memset(
                    self._buffers[name].ptr + start * size, 0, (n - start) * size, self._stream
                )
        self._bank_objects = n

    def write_slot(self, slot: int, key: DeviceArray, value: DeviceArray, objects: int) -> None:
        self._ready()
        self._check_objects(objects)
        if not 0 <= slot < self.capacity:
            raise InputError(f"slot {slot} outside 0..{self.capacity - 1}")
        if objects > self._bank_objects:
            raise InputError(
                f"{objects} objects written but the bank holds "
                f"{self._bank_objects}; call allocate_bank first"
            )
        for src, name in ((key, Tensor.BANK_KEY), (value, Tensor.BANK_VALUE)):
            per_slot = self._object_bytes(name) // self.capacity
            if src.shape[0] < objects or src.nbytes // src.shape[0] != per_slot:
                raise InputError(
                    f"{name} slot data of shape {src.shape} does not fit the bank "
                    f"({objects} objects at {self._bank_hw})"
                )
            dst = self._buffers[name].ptr + slot * per_slot
            # bank[o, slot] = src[o] for o < objects: rows of one slot, pitched by T slots.
            cuda_mem.copy_2d_dtod(
                dst, self.capacity * per_slot, src.ptr, per_slot, per_slot, objects, self._stream
            )

    def set_valid(self, valid: np.ndarray) -> None:
        self._ready()
        valid = np.asarray(valid)
        if valid.ndim != 2 or valid.shape[1] != self.capacity:
            raise InputError(f"valid must be (objects, {self.capacity}), got {valid.shape}")
        host = np.ascontiguousarray(valid[: self.max_objects], dtype=self.dtypes[Tensor.BANK_VALID])
        cuda_mem.copy_htod(self._buffers[Tensor.BANK_VALID].ptr, host, self._stream)

    def move_object(self, src: int, dst: int) -> None:
        self._ready()
        if not (0 <= src < self._bank_objects and 0 <= dst < self._bank_objects):
            raise InputError(
                f"move_object({src}, {dst}) outside the bank's {self._bank_objects} objects"
            )
        if src == dst:
            return
        for name in (Tensor.BANK_KEY, Tensor.BANK_VALUE):
            size = self._object_bytes(name)
            base = self._buffers[name].ptr
            cuda_mem.copy_dtod(base + dst * size, base + src * size, size, self._stream)
