"""Export constants that the CLI needs at import time (pure Python: no torch, no onnx)."""

from __future__ import annotations

from mlvos.runtime.spec import (
    FEATURE_STRIDE,  # noqa: F401 - re-exported for export modules
    Precision,
)

# Graph precisions `mlvos export` writes (spec.Precision), and its default.
PRECISIONS: tuple[str, ...] = Precision.EXPORTED
DEFAULT_PRECISIONS: tuple[str, ...] = Precision.EXPORTED
# TensorRT 10.3 (JetPack 6.1/6.2) parses opsets 9..20; 17 is what the TorchScript exporter and
# AutoCast both handle natively.
DEFAULT_OPSET: int = 17
MIN_OPSET: int = 13
MAX_OPSET: int = 20
# The annotated frame plus the previous frame.
MIN_CAPACITY: int = 2

VALIDATION_FORMAT = "mlvos-export-validation"
VALIDATION_VERSION = 1
VALIDATION_FILE = "validation.json"
