"""manifest.json, the one owner of its schema: read (with a format and version check), verify,
write, and add a precision's graphs. Export and calib write it only through this module.

Layout (format "mlvos-export", format_version 1):
    mlvos_version, checkpoint {file, source, source_name, sha256, variant, stage, iteration},
    config (ModelConfig dict), opset, stride, feature_stride, capacity,
    normalization {mean, std (0..255 scale), inside_graph}, padding {mode, value, multiple},
    key_dim, value_dim, static_size ([H, W] or null), precisions,
    representative {source, size, frames, objects, mem_every, seed} (data of FP16 + validation),
    tensorrt {version, opset_range, op_list_source},
    graphs {graph: {precision: {file, sha256, inputs, outputs, [fp32_nodes, fp16_kept,
            attention_fusable, attention_note (why not, for a read with priors)]}}}
Tensor entries are TensorSpec dicts {"name", "dtype", "shape"}, symbolic dims as strings ("O", "H",
"W/16"). numpy/json only.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlvos.fileio import atomic_write_text, sha256_file, stable_json
from mlvos.runtime.errors import ManifestError
from mlvos.runtime.spec import DEFAULT_MEM_EVERY, Graph, TensorSpec

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mlvos-export"
MANIFEST_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"


def graph_file(graph: str, precision: str) -> str:
    """File name of one exported graph inside the export directory."""
    return f"{graph}.{precision}.onnx"


def graph_entry(
    graph: str,
    precision: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    written: str | os.PathLike,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest entry of <graph>.<precision>.onnx, hashed from `written` (the file as written,
    possibly still under a staging name), with any extra keys (fp32_nodes, ...)."""
    return {
        "file": graph_file(graph, precision),
        "sha256": sha256_file(written),
        "inputs": [t.to_dict() for t in inputs],
        "outputs": [t.to_dict() for t in outputs],
        **extra,
    }


def config_schedule(config: dict[str, Any]) -> tuple[int, int]:
    """(mem_every, prev_every) of a ModelConfig dict; STM's where it has no such fields."""
    return (int(config.get("mem_every", DEFAULT_MEM_EVERY)), int(config.get("prev_every", 1)))


def read_options(data: dict[str, Any]) -> dict[str, Any]:
    """Manifest.read_options of a manifest.json dict (for callers that hold the raw dict)."""
    config = data.get("config") or {}
    return {"read_topk": config.get("read_topk"), "read_kernel": config.get("read_kernel")}


@dataclass(frozen=True)
class GraphInfo:
    name: str
    precision: str
    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise ManifestError(f"graph {self.name} ({self.precision}) has no input {name!r}")

    def output(self, name: str) -> TensorSpec:
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
    def new(cls, root: str | os.PathLike, fields: dict[str, Any]) -> Manifest:
        """A manifest for a new export in ROOT: `fields` plus the format stamp (not written)."""
        return cls(Path(root), {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
                                **fields})

    @classmethod
    def load(cls, root: str | os.PathLike) -> Manifest:
        """Read ROOT/manifest.json; ManifestError if it is missing, not JSON, of another format,
        of a newer format version or lacks the keys every runtime reads."""
        root = Path(root)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(
                f"{root} is not an export directory: {MANIFEST_FILE} is missing. Create one with "
                "`mlvos export --checkpoint CKPT --out DIR`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path} is not valid JSON ({e}); re-export the model") from None
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        if found != MANIFEST_FORMAT:
            raise ManifestError(
                f"{path} is not an mlvos export manifest (format {found!r}, expected "
                f"{MANIFEST_FORMAT!r})"
            )
        try:
            version = int(data.get("format_version", 0))
        except (TypeError, ValueError):
            version = None
        if version is None or version > MANIFEST_VERSION:
            raise ManifestError(
                f"{path} has format_version {data.get('format_version')!r}; this mlvos reads "
                f"versions up to {MANIFEST_VERSION}: upgrade mlvos or re-export the model"
            )
        for key in ("graphs", "stride", "capacity"):
            if key not in data:
                raise ManifestError(f"{path} lacks {key!r}; re-export the model")
        return cls(root, data)

    def write(self) -> Path:
        """Write ROOT/manifest.json atomically (stable JSON: identical content, identical bytes)."""
        path = self.root / MANIFEST_FILE
        atomic_write_text(path, stable_json(self.data))
        return path

    def with_precision(self, precision: str, entries: dict[str, dict[str, Any]]) -> Manifest:
        """A copy with graphs[g][precision] = entries[g] for every graph g, and `precision` listed
        in "precisions"; every other key is unchanged."""
        missing = [g for g in Graph.ALL if g not in entries]
        if missing:
            raise ManifestError(f"adding {precision}: no entry for graph(s) {missing}")
        data = copy.deepcopy(self.data)
        for graph, entry in entries.items():
            data["graphs"].setdefault(graph, {})[precision] = entry
        if precision not in data.get("precisions", []):
            data["precisions"] = [*data.get("precisions", []), precision]
        return Manifest(self.root, data)

    def without_precision(self, precision: str) -> Manifest:
        """A copy with graphs[*][precision] and `precision` in "precisions" removed; every other
        key is unchanged."""
        data = copy.deepcopy(self.data)
        for per_precision in data["graphs"].values():
            per_precision.pop(precision, None)
        data["precisions"] = [p for p in data.get("precisions", []) if p != precision]
        return Manifest(self.root, data)

    def verify(self) -> list[str]:
        """Every mismatch between the files in ROOT and the manifest's sha256 sums (empty: ok)."""
        entries = []
        if self.data.get("checkpoint", {}).get("file"):
            entries.append((self.data["checkpoint"]["file"], self.data["checkpoint"]["sha256"]))
        for per_precision in self.data["graphs"].values():
            for entry in per_precision.values():
                entries.append((entry["file"], entry["sha256"]))
        problems = []
        for name, digest in entries:
            path = self.root / name
            if not path.is_file():
                problems.append(f"{name}: missing")
            elif sha256_file(path) != digest:
                problems.append(f"{name}: sha256 differs from the manifest (modified or corrupt)")
        return problems

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
    def schedule(self) -> tuple[int, int]:
        """(mem_every, prev_every): the memory schedule of the exported model's config
        (ModelConfig), STM's (DEFAULT_MEM_EVERY, 1) where the config predates the fields."""
        return config_schedule(self.data.get("config") or {})

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

        def tensors(key: str) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec.from_dict(t) for t in entry.get(key, []))

        return GraphInfo(
            name, precision, path, entry["sha256"], tensors("inputs"), tensors("outputs")
        )
