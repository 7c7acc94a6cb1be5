"""What every module of the TensorRT backend shares: its errors (defined in runtime.errors) and
the lazy TensorRT import."""

from __future__ import annotations

from typing import Any

from mlvos.errors import require
from mlvos.runtime.errors import EngineCacheError, TrtError  # noqa: F401 - the package's errors


def _import_trt() -> Any:
    """The tensorrt module, imported on first use (never when this package is imported).

    Raises:
        MissingDependencyError: tensorrt is not installed (names the `mlvos[trt]` extra).
    """
    return require("tensorrt", "trt", "the TensorRT backend")
