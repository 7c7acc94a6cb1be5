"""Typed export errors (all subclasses of mlvos.errors.MlvosError)."""

from __future__ import annotations

from mlvos.errors import MlvosError


class ExportError(MlvosError):
    """An ONNX export, simplification, check or conversion failed."""


class OutputExistsError(ExportError, FileExistsError):
    """The export directory already exists and --force was not given."""


class UnsupportedOpError(ExportError):
    """A graph holds an ONNX op (or opset) that TensorRT's ONNX parser does not support."""


class ValidationFailedError(ExportError):
    """One or more exported outputs differ from PyTorch beyond tolerance (all listed at once)."""

    def __init__(self, message: str, failures: list[str]):
        super().__init__(message)
        self.failures = failures
