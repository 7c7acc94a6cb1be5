"""Reading and checking an export directory's manifest.json (numpy/json only)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlvos.errors import MlvosError
from mlvos.runtime.spec import Graph

MANIFEST = "manifest.json"
FORMAT = "mlvos-export"


class ManifestError(MlvosError):
    """An export directory is missing, incomplete, tampered with or of an unknown format."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_options(data: dict[str, Any]) -> dict[str, Any]:
    """Manifest.read_options of a manifest.json dict (for callers that hold the raw dict)."""
    config = data.get("config") or {}
    return {"read_topk": config.get("read_topk"), "read_kernel": config.get("read_kernel")}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name: "uint8", "float32", "float16"
    shape: tuple[
        int | str, ...
    ]  # ints for static dims, strings ("O", "H/16", ...) for dynamic ones


@dataclass(frozen=True)
class GraphInfo:
    name: str
    precision: str
    path: Path
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def input(self, name: str) -> TensorInfo:
        for t in self.inputs:
            if t.name == name:
                return t
        raise ManifestError(f"graph {self.name} ({self.precision}) has no input {name!r}")

    def output(self, name: str) -> TensorInfo:
        for t in self.outputs:
            if t.name == name:
                return t
        raise ManifestError(f"graph {self.name} ({self.precision}) has no output {name!r}")


class Manifest:
    """An export directory. Everything a runtime needs (names, shapes, dtypes, stride, capacity,
    normalization) is read from here, never hard-coded."""

    def __init__(self, root: Path, data: dict[str, Any]):
        self.root = root
        self.data = data

    @classmethod
    def load(cls, root: str | os.PathLike) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise ManifestError(
                f"{root} is not an export directory: {MANIFEST} is missing. Create one with "
                "`mlvos export --checkpoint CKPT --out DIR`"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path} is not valid JSON ({e}); re-export the model") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ManifestError(f"{path} is not an mlvos export manifest (format != {FORMAT!r})")
        for key in ("graphs", "stride", "capacity"):
            if key not in data:
                raise ManifestError(f"{path} lacks {key!r}; re-export the model")
        return cls(root, data)

    @property
    def stride(self) -> int:
        return int(self.data["stride"])

    @property
    def capacity(self) -> int:
        return int(self.data["capacity"])

    @property
    def static_size(self) -> tuple[int, int] | None:
        s = self.data.get("static_size")
        return (int(s[0]), int(s[1])) if s else None

    @property
    def precisions(self) -> list[str]:
        sets = [set(self.data["graphs"].get(g, {})) for g in Graph.ALL]
        return sorted(set.intersection(*sets)) if sets else []

    @property
    def read_options(self) -> dict[str, Any]:
        """The memory-read priors the graphs were exported with (an export may override its
        checkpoint's, see `mlvos export --read-topk/--read-kernel`), as keyword arguments of
        TorchRunner: {"read_topk": int | None, "read_kernel": float | None}, None where the
        manifest's config predates the option (the checkpoint's value then applies)."""
        return read_options(self.data)

    @property
    def checkpoint_path(self) -> Path | None:
        ck = self.data.get("checkpoint") or {}
        name = ck.get("file")
        return self.root / name if name else None

    def graph(self, name: str, precision: str, *, verify: bool = True) -> GraphInfo:
        """Look up one graph; with `verify`, check that the file exists and matches its sha256."""
        graphs = self.data["graphs"]
        if name not in graphs:
            raise ManifestError(f"manifest in {self.root} has no graph {name!r}; re-export")
        if precision not in graphs[name]:
            raise ManifestError(
                f"graph {name!r} has no {precision!r} version in {self.root} (available: "
                f"{sorted(graphs[name])}); export it with --precision {precision}"
            )
        entry = graphs[name][precision]
        path = self.root / entry["file"]
        if verify:
            if not path.is_file():
                raise ManifestError(f"{path} listed in the manifest is missing; re-export")
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ManifestError(
                    f"{path} does not match the manifest (sha256 {digest[:12]}... vs "
                    f"{entry['sha256'][:12]}...): the file was modified or replaced; re-export"
                )

        def tensors(key: str) -> tuple[TensorInfo, ...]:
            return tuple(
                TensorInfo(t["name"], t["dtype"], tuple(t["shape"])) for t in entry.get(key, [])
            )

        return GraphInfo(
            name, precision, path, entry["sha256"], tensors("inputs"), tensors("outputs")
        )
