"""Typed runtime errors (all subclasses of mlvos.errors.MlvosError): the export directory, CUDA
and TensorRT. numpy-free, import-free: every runtime module can raise them."""

from __future__ import annotations

from mlvos.errors import MlvosError


class ManifestError(MlvosError):
    """An export directory is missing, incomplete, tampered with or of an unknown format."""


class CudaError(MlvosError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


class NoCudaDeviceError(CudaError):
    """No usable CUDA device (no GPU, no driver, or a driver too old for the CUDA runtime)."""


class TrtError(MlvosError):
    """Building, loading or running a TensorRT engine failed."""


class EngineCacheError(TrtError):
    """A cached engine is missing, stale or foreign and building was not allowed."""
