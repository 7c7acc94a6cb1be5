"""Typed profiling errors (subclasses of mlvos.errors.MlvosError)."""

from __future__ import annotations

from mlvos.errors import MlvosError


class MacCountError(MlvosError):
    """A graph's MACs cannot be counted (unbound dims, shapes that do not resolve)."""
