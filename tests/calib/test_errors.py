"""Bad input to `calibrate` and `mlvos calib`: typed errors whose messages say the fix, raised
before anything is quantized and without touching the export directory."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mlvos.calib import calibrate
from mlvos.calib.errors import (
    CalibDataError,
    CalibError,
    MissingFp32Error,
    QuantizationError,
    TooFewSamplesError,
)
from mlvos.errors import MlvosError
from mlvos.runtime.manifest import ManifestError


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    dst = tmp_path / "export"
    shutil.copytree(tiny_export, dst)
    return dst


def _run(export, data, out, **kw):
    kw.setdefault("samples", 4)
    return calibrate(export, data, out, **kw)


def test_errors_are_mlvos_errors():
    for cls in (CalibDataError, MissingFp32Error, TooFewSamplesError, QuantizationError):
        assert issubclass(cls, CalibError) and issubclass(cls, MlvosError)


@pytest.mark.parametrize("samples", [0, 3, 2.5, True])
def test_too_few_samples_requested(export_copy, calib_data, tmp_path, samples):
    with pytest.raises(TooFewSamplesError, match="--samples must be an integer >= 4"):
        _run(export_copy, calib_data, tmp_path / "o", samples=samples)


def test_dataset_with_too_few_frames(export_copy, calib_data, tmp_path):
    # 2 sequences x 5 frames: 8 usable frames (frame 0 is the annotation).
    with pytest.raises(TooFewSamplesError, match="only 8 usable frames.*lower --samples"):
        _run(export_copy, calib_data, tmp_path / "o", samples=9)
    assert not (tmp_path / "o").exists()


def test_empty_or_wrong_layout_dataset(export_copy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibDataError, match="not a usable DAVIS-layout dataset.*JPEGImages"):
        _run(export_copy, empty, tmp_path / "o")
    flat = tmp_path / "flat"
    (flat / "JPEGImages" / "480p").mkdir(parents=True)
    (flat / "Annotations" / "480p").mkdir(parents=True)
    (flat / "ImageSets" / "2017").mkdir(parents=True)
    (flat / "ImageSets" / "2017" / "val.txt").write_text("\n")
    with pytest.raises(CalibDataError, match="lists no sequences"):
        _run(export_copy, flat, tmp_path / "o")
    with pytest.raises(CalibDataError, match="does not exist"):
        _run(export_copy, tmp_path / "missing", tmp_path / "o")


def test_unknown_sequence(export_copy, calib_data, tmp_path):
    with pytest.raises(CalibDataError, match=r"\['nope'\] are not in"):
        _run(export_copy, calib_data, tmp_path / "o", sequences=["nope"])


def test_frames_smaller_than_the_stride(export_copy, make_data, tmp_path):
    small = make_data(tmp_path / "small", seed=1, height=24, width=40)
    with pytest.raises(CalibDataError, match="24x40 frames.*>= 32 \\(its stride is 32\\)"):
        _run(export_copy, small, tmp_path / "o")


def test_empty_first_annotation(export_copy, calib_data, tmp_path):
    from mlvos.palette import write_mask

    data = tmp_path / "d"
    shutil.copytree(calib_data, data)
    first = sorted((data / "Annotations" / "480p" / "synth-0000").glob("*.png"))[0]
    write_mask(first, np.zeros((64, 96), np.uint8))
    with pytest.raises(CalibDataError, match="holds no object"):
        _run(export_copy, data, tmp_path / "o")


def test_static_export_needs_its_size(export_copy, calib_data, tmp_path):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["static_size"] = [128, 128]
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CalibDataError, match="export is static at 128x128"):
        _run(export_copy, calib_data, tmp_path / "o")


def test_manifest_without_fp32(export_copy, calib_data, tmp_path):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        graph["fp16"] = graph.pop("fp32")
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MissingFp32Error, match="no FP32 version.*--precision fp32"):
        _run(export_copy, calib_data, tmp_path / "o")


def test_modified_fp32_graph_and_not_an_export(export_copy, calib_data, tmp_path):
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        _run(tmp_path, calib_data, tmp_path / "o")
    path = export_copy / "read_decoder.fp32.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="does not match the manifest"):
        _run(export_copy, calib_data, tmp_path / "o")


def test_existing_int8_needs_force(export_copy, calib_data, tmp_path):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["graphs"]["query_encoder"]["int8"] = dict(manifest["graphs"]["query_encoder"]["fp32"])
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CalibError, match="already holds int8 graphs.*--force"):
        _run(export_copy, calib_data, tmp_path / "o")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"method": "tensorrt"}, "unknown --method"),
        ({"calibrator": "percentile"}, "unknown --calibrator"),
        ({"selection": "first"}, "unknown --select"),
        ({"keep_fp32": ["auto", "first_conv"]}, "not a mix"),
        ({"keep_fp32": ["stem"]}, "unknown --keep-fp32"),
        ({"mem_every": 0}, "--mem-every"),
    ],
)
def test_bad_options(export_copy, calib_data, tmp_path, kw, match):
    with pytest.raises(CalibError, match=match):
        _run(export_copy, calib_data, tmp_path / "o", **kw)


def test_failed_quantization_leaves_export_untouched(
    export_copy, calib_data, tmp_path, monkeypatch
):
    from mlvos.calib import quantize

    before = {p.name: p.read_bytes() for p in export_copy.iterdir()}

    def broken(*args, **kwargs):
        raise QuantizationError("boom")

    monkeypatch.setattr(quantize, "quantize_model", broken)
    with pytest.raises(QuantizationError, match="boom"):
        _run(export_copy, calib_data, tmp_path / "o", keep_fp32=["none"])
    assert {p.name: p.read_bytes() for p in export_copy.iterdir()} == before


def test_cli_help_without_heavy_imports():
    """`mlvos calib --help` needs argparse only (run in a fresh interpreter)."""
    code = (
        "import argparse, sys\n"
        "from mlvos.calib import cli\n"
        "p = argparse.ArgumentParser(prog='mlvos'); cli.register(p.add_subparsers())\n"
        "heavy = [m for m in ('numpy', 'onnx', 'torch', 'modelopt') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "p.parse_args(['calib', '--help'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "--keep-fp32" in res.stdout and "--samples" in res.stdout


def test_cli_parses_into_calibrate(monkeypatch):
    from mlvos.calib import api, cli

    seen = {}
    monkeypatch.setattr(api, "calibrate", lambda *a, **kw: seen.update(args=a, kw=kw))
    parser = argparse.ArgumentParser(prog="mlvos")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "calib",
            "--model",
            "E",
            "--data",
            "D",
            "--out",
            "O",
            "--samples",
            "8",
            "--keep-fp32",
            "first_conv",
            "attention",
            "--method",
            "ort",
        ]
    )
    assert args.func(args) == 0
    assert seen["args"] == ("E", "D", "O")
    assert seen["kw"]["samples"] == 8 and seen["kw"]["method"] == "ort"
    assert seen["kw"]["keep_fp32"] == ["first_conv", "attention"]
    assert seen["kw"]["mem_every"] == 5


def test_calib_precision_is_the_specs():
    from mlvos.calib.constants import PRECISION
    from mlvos.runtime.spec import Precision

    assert PRECISION == Precision.INT8 and PRECISION in Precision.GRAPHS
