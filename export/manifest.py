"""manifest.json: everything a runtime needs to drive the exported graphs, and to re-check them.

Layout (format "mlvos-export", format_version 1):
    mlvos_version, checkpoint {file, source, source_name, sha256, variant, stage, iteration},
    config (ModelConfig dict), opset, stride, feature_stride, capacity,
    normalization {mean, std (0..255 scale), inside_graph}, padding {mode, value, multiple},
    key_dim, value_dim, static_size ([H, W] or null), precisions,
    representative {source, size, frames, objects, mem_every, seed} (data of FP16 + validation),
    tensorrt {version, opset_range, op_list_source},
    graphs {graph: {precision: {file, sha256, inputs, outputs, [fp32_nodes, fp16_kept,
            attention_fusable, attention_note (why not, for a read with priors)]}}}
Tensor entries are {"name", "dtype", "shape"} with symbolic dims as strings ("O", "H", "W/16").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlvos.export.errors import ExportError
from mlvos.export.onnx_utils import sha256_file
from mlvos.export.options import MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION


def dumps(data: dict[str, Any]) -> str:
    """Stable JSON text (sorted keys, fixed indentation, trailing newline): byte-identical for
    identical content."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def default_permissions(path: str | os.PathLike) -> None:
    """Give a file or directory the permissions the umask gives new ones (the temporary files of
    mlvos.fileio are created private: 0600 / 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check DIR/manifest.json.

    Raises:
        ExportError: missing, not JSON, another format, or a newer format version.
    """
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(
            f"{export_dir} is not an mlvos export directory (no {MANIFEST_FILE}); create one with "
            "`mlvos export --checkpoint CKPT --out DIR`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} is unreadable or not JSON ({e}); re-export") from e
    if data.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{path} has format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if int(data.get("format_version", 0)) > MANIFEST_VERSION:
        raise ExportError(
            f"{path} has format_version {data['format_version']}, newer than this mlvos reads "
            f"({MANIFEST_VERSION}); upgrade mlvos"
        )
    return data


def verify_files(export_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """Every mismatch between the files in `export_dir` and the sha256 sums of the manifest."""
    export_dir = Path(export_dir)
    entries = [(manifest["checkpoint"]["file"], manifest["checkpoint"]["sha256"])]
    for per_precision in manifest["graphs"].values():
        for entry in per_precision.values():
            entries.append((entry["file"], entry["sha256"]))
    problems = []
    for name, digest in entries:
        path = export_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name}: sha256 differs from the manifest (modified or corrupt)")
    return problems
