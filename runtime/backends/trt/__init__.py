"""TensorRT backend: engine build from the manifest's ONNX graphs, a checked engine cache, and
TrtRunner, which runs the three engines on one CUDA stream with the memory bank on the device.

Modules:
  plan    what to build: Profile and its shapes, the precision Recipe (pure Python).
  cache   the engine key, metadata and cache checks, the timing-cache path.
  build   BuildOptions, the build plan (`plan_engines`), TensorRT's builder, `build_engine`
          and `ensure_engines`.
  runner  TrtRunner.
  common  the errors and the lazy TensorRT import.

Supported TensorRT: 10.3 (JetPack 6.1/6.2) to 11.x, through the name-based API only
(`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Every TensorRT attribute used in
this package exists in both 10.3 and 11.4, except those on lines marked `# trt-compat: NAME ...`,
which sit behind a version or feature guard; tests/runtime/test_trt_api.py checks every module of
the package against the real API dumps in shared/reference/tensorrt.

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

from mlvos.runtime.backends.trt.build import (
    BuildOptions,
    BuildPlan,
    EnginePlan,
    build_engine,
    build_serialized,
    ensure_engines,
    plan_engines,
    profile_for,
)
from mlvos.runtime.backends.trt.cache import (
    ENGINE_DIR,
    ENGINE_FORMAT,
    ENGINE_FORMAT_VERSION,
    EngineRecord,
    Target,
    check_cached,
    current_target,
    engine_key,
    engine_paths,
    key_mismatches,
    metadata_path,
    read_metadata,
    stored_profile,
    timing_cache_path,
    write_engine,
)
from mlvos.runtime.backends.trt.common import EngineCacheError, TrtError
from mlvos.runtime.backends.trt.plan import (
    FP16_RECIPES,
    PRECISIONS,
    STRONG_TYPING_COMPLETE,
    Profile,
    Recipe,
    min_side,
    plan_recipe,
    profile_shapes,
    recipe_for,
    version_tuple,
)
from mlvos.runtime.backends.trt.runner import TrtRunner

__all__ = [
    "ENGINE_DIR",
    "ENGINE_FORMAT",
    "ENGINE_FORMAT_VERSION",
    "FP16_RECIPES",
    "PRECISIONS",
    "STRONG_TYPING_COMPLETE",
    "BuildOptions",
    "BuildPlan",
    "EngineCacheError",
    "EnginePlan",
    "EngineRecord",
    "Profile",
    "Recipe",
    "Target",
    "TrtError",
    "TrtRunner",
    "build_engine",
    "build_serialized",
    "check_cached",
    "current_target",
    "engine_key",
    "engine_paths",
    "ensure_engines",
    "profile_for",
    "key_mismatches",
    "metadata_path",
    "min_side",
    "plan_engines",
    "plan_recipe",
    "profile_shapes",
    "read_metadata",
    "recipe_for",
    "stored_profile",
    "timing_cache_path",
    "version_tuple",
    "write_engine",
]
