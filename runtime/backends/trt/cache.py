"""The engine cache: what an engine is specific to (its key), where it lives, and whether a cached
engine may be reused.

Each engine `<graph>.<precision>.engine` has a JSON file beside it (`.engine.json`) holding the
format tag and version, the key (ONNX sha256, precision recipe, TensorRT version, GPU, compute
capability, platform, profile, shapes, DLA core), the engine file's sha256 and build facts. An
engine is reused only if its key equals the one needed and the file still matches its sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlvos.errors import InputError
from mlvos.fileio import atomic_write_bytes, atomic_write_text, sha256_file
from mlvos.runtime.backends import cuda_mem
from mlvos.runtime.backends.trt.plan import Profile, Recipe
from mlvos.runtime.manifest import GraphInfo
from mlvos.runtime.spec import Graph

ENGINE_FORMAT = "mlvos-trt-engine"
ENGINE_FORMAT_VERSION = 1
ENGINE_DIR = "engines"


@dataclass(frozen=True)
class Target:
    """What a serialized engine is specific to, besides its network and settings."""

    tensorrt: str
    gpu: str
    compute_capability: str
    platform: str
    tensorrt_cuda: str  # CUDA major TensorRT was built for ("12"), from its wheel; else "unknown"
    cuda_runtime: str  # the CUDA runtime cuda-python loads ("12.6"): the system CUDA on JetPack


def tensorrt_cuda_major() -> str:
    """The CUDA major of the installed TensorRT wheel, from its distribution name
    (tensorrt-cu12, tensorrt_cu13_libs, ...); "unknown" for a system install (JetPack's apt
    packages carry no such name: the cuda_runtime field of the key covers that case)."""
    import importlib.metadata

    majors = set()
    for dist in importlib.metadata.distributions():
        m = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_].*)?", (dist.metadata["Name"] or "").lower())
        if m:
            majors.add(m.group(1))
    return majors.pop() if len(majors) == 1 else "unknown"


def current_target(trt: Any, device: int = 0) -> Target:
    info = cuda_mem.device_info(device)
    return Target(trt.__version__, info.name, info.compute_capability, platform.machine(),
                  tensorrt_cuda_major(), cuda_mem.cuda_versions()["runtime"])


@dataclass(frozen=True)
class EngineRecord:
    graph: str
    path: Path
    meta: dict[str, Any]
    built: bool  # False: reused from the cache


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


def metadata_path(engine_path: Path) -> Path:
    """The JSON metadata file beside the engine at `engine_path`."""
    return engine_path.with_name(engine_path.name + ".json")


def engine_paths(engine_dir: Path, graph: str, precision: str) -> tuple[Path, Path]:
    """(engine file, its JSON metadata) inside `engine_dir`."""
    path = Path(engine_dir) / f"{graph}.{precision}.engine"
    return path, metadata_path(path)


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
    meta_path = metadata_path(engine_path)
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


def write_engine(
    engine_path: Path, key: dict[str, Any], data: bytes, build_seconds: float
) -> dict[str, Any]:
    """Write a serialized engine and then its metadata (each atomically); return the metadata.

    In that order: a write killed in between leaves the previous metadata (or none), which the
    new engine does not match, so check_cached asks for a rebuild.
    """
    atomic_write_bytes(engine_path, data)
    meta = {
        "format": ENGINE_FORMAT,
        "version": ENGINE_FORMAT_VERSION,
        "key": key,
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "engine_bytes": len(data),
        "build_seconds": round(build_seconds, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        atomic_write_text(metadata_path(engine_path), json.dumps(meta, indent=2) + "\n")
    except Exception:
        engine_path.unlink(missing_ok=True)  # no engine without its metadata (disk full, ...)
        raise
    return meta


def stored_profile(engine_dir: Path, precision: str) -> Profile | None:
    """The profile of an existing engine of this precision (so a runner reuses what
    `mlvos engine` built), or None."""
    for g in Graph.ALL:
        meta = read_metadata(engine_paths(engine_dir, g, precision)[1])
        try:
            return Profile.from_dict(meta["key"]["profile"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError, InputError):
            continue
    return None


def timing_cache_path(engine_dir: Path, target: Target) -> Path:
    """Default timing-cache file: one per TensorRT version and GPU, beside the engines."""
    tag = re.sub(
        r"[^A-Za-z0-9.]+", "-", f"{target.tensorrt}-{target.gpu}-sm{target.compute_capability}"
    )
    return Path(engine_dir) / f"timing-{tag.strip('-')}.cache"
