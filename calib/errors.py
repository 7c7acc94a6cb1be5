"""Typed calibration errors (all subclasses of mlvos.errors.MlvosError)."""

from __future__ import annotations

from mlvos.errors import DatasetError, MlvosError


class CalibError(MlvosError):
    """INT8 calibration failed: bad option, unusable export directory or quantizer failure."""


class MissingFp32Error(CalibError):
    """The export directory holds no complete set of FP32 graphs (calibration runs on them)."""


class CalibDataError(CalibError, DatasetError):
    """The calibration / evaluation dataset is missing, empty, of the wrong layout, or its frames
    do not fit the model (smaller than the stride, another size than a static export)."""


class TooFewSamplesError(CalibError):
    """Fewer calibration samples than required (asked for too few, or the data has too few)."""


class QuantizationError(CalibError):
    """The quantizer failed, or its graph breaks a deployment rule (TensorRT ops, zero points)."""
