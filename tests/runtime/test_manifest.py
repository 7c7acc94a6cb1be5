"""runtime/manifest.py owns manifest.json: read with a format and version check, verify files,
add a precision, write stable bytes (numpy/json only, no export needed)."""

from __future__ import annotations

import json

import pytest

from mlvos.runtime.manifest import (
    MANIFEST_FILE,
    MANIFEST_VERSION,
    Manifest,
    ManifestError,
    graph_entry,
    graph_file,
)
from mlvos.runtime.spec import Graph, TensorSpec

FRAME = TensorSpec("frame", "uint8", (1, 3, "H", "W"))
KEY = TensorSpec("query_key", "float32", (1, 64, "H/16", "W/16"))


def _export(root, precisions=("fp32",)) -> Manifest:
    graphs = {}
    for g in Graph.ALL:
        for p in precisions:
            (root / graph_file(g, p)).write_bytes(f"{g}-{p}".encode())
            graphs.setdefault(g, {})[p] = graph_entry(
                g, p, [FRAME], [KEY], written=root / graph_file(g, p)
            )
    (root / "checkpoint.pt").write_bytes(b"ckpt")
    fields = {"graphs": graphs, "stride": 32, "capacity": 4, "precisions": list(precisions),
              "checkpoint": {"file": "checkpoint.pt", "sha256": graph_entry(
                  "x", "y", [], [], written=root / "checkpoint.pt")["sha256"]}}
    manifest = Manifest.new(root, fields)
    manifest.write()
    return manifest


def test_write_load_roundtrip_is_byte_stable(tmp_path):
    written = _export(tmp_path)
    first = (tmp_path / MANIFEST_FILE).read_bytes()
    loaded = Manifest.load(tmp_path)
    assert loaded.data == written.data and loaded.data["format_version"] == MANIFEST_VERSION
    loaded.write()
    assert (tmp_path / MANIFEST_FILE).read_bytes() == first
    info = loaded.graph(Graph.QUERY_ENCODER, "fp32")
    assert info.input("frame") == FRAME and info.output("query_key") == KEY
    assert loaded.verify() == []


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="other"), "format 'other', expected 'mlvos-export'"),
        (lambda d: d.update(format_version=MANIFEST_VERSION + 1), "upgrade mlvos"),
        (lambda d: d.update(format_version="two"), "format_version 'two'"),
        (lambda d: d.pop("capacity"), "lacks 'capacity'"),
    ],
)
def test_load_rejects_foreign_or_newer_manifests(tmp_path, edit, message):
    _export(tmp_path)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    edit(data)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        Manifest.load(tmp_path)


def test_load_rejects_missing_and_broken_files(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[1, 2")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="format 'list'"):
        Manifest.load(tmp_path)


def test_verify_lists_every_missing_or_modified_file(tmp_path):
    manifest = _export(tmp_path)
    (tmp_path / graph_file(Graph.READ_DECODER, "fp32")).unlink()
    (tmp_path / "checkpoint.pt").write_bytes(b"changed")
    assert manifest.verify() == [
        "checkpoint.pt: sha256 differs from the manifest (modified or corrupt)",
        f"{graph_file(Graph.READ_DECODER, 'fp32')}: missing",
    ]
    with pytest.raises(ManifestError, match="is missing; re-export"):
        manifest.graph(Graph.READ_DECODER, "fp32")


def test_with_precision_adds_entries_and_keeps_the_rest(tmp_path):
    manifest = _export(tmp_path)
    staged = tmp_path / ".staged"
    staged.write_bytes(b"int8 bytes")
    entries = {g: graph_entry(g, "int8", [FRAME], [KEY], written=staged, fp32_nodes=[])
               for g in Graph.ALL}
    added = manifest.with_precision("int8", entries)
    assert added.data["precisions"] == ["fp32", "int8"]
    assert added.data["graphs"][Graph.MEMORY_ENCODER]["int8"]["file"] == "memory_encoder.int8.onnx"
    assert added.data["graphs"][Graph.MEMORY_ENCODER]["fp32"] == \
        manifest.data["graphs"][Graph.MEMORY_ENCODER]["fp32"]
    assert "int8" not in manifest.data["precisions"]  # a copy, the original is unchanged
    assert manifest.with_precision("int8", entries).data["precisions"].count("int8") == 1
    with pytest.raises(ManifestError, match="no entry for graph"):
        manifest.with_precision("int8", {Graph.QUERY_ENCODER: entries[Graph.QUERY_ENCODER]})
