"""Typed exceptions. Every message says what failed, what was received vs expected, and the fix."""

from __future__ import annotations


class MlvosError(Exception):
    """Base class of every error mlvos raises on purpose."""


class InputError(MlvosError, ValueError):
    """A tensor, array, image or argument given by the user has the wrong shape, dtype or value."""


class ConfigError(MlvosError, ValueError):
    """A model/variant configuration is unknown or inconsistent."""


class CheckpointError(MlvosError):
    """A checkpoint file is missing, truncated, not an mlvos checkpoint, or for another model."""


class DatasetError(MlvosError):
    """A dataset folder is missing files or holds files of the wrong kind or size."""


class PlacementError(InputError):
    """No object of a drawn natural scene stays visible in the frame (a rare draw at small
    sizes; data.natural.placed_sequence redraws)."""


class MissingDependencyError(MlvosError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to install."""


class DiskFullError(MlvosError, OSError):
    """A write ran out of disk space (ENOSPC / EDQUOT); nothing partial was left behind."""


class BusyError(MlvosError):
    """Another process holds the lock of an artifact this one must write (it is writing it)."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise MissingDependencyError naming the pip extra.

    Args:
        module: import name, e.g. "onnxruntime".
        extra: mlvos extra that provides it, e.g. "ort".
        purpose: what it is needed for, shown in the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not importable ({e}). "
            f"Install it with: pip install 'mlvos[{extra}]'"
        ) from e
