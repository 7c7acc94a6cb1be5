"""Bad input to `mlvos export`: typed errors with actionable messages, raised before heavy work."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest

from mlvos.errors import CheckpointError, InputError, MlvosError
from mlvos.export import cli as export_cli
from mlvos.export import export_checkpoint
from mlvos.export.errors import ExportError, OutputExistsError
from mlvos.model.checkpoint import save_checkpoint
from mlvos.model.registry import build_model
from mlvos.runtime.manifest import ManifestError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, build_model("tiny", seed=0))
    return path


def _export(checkpoint, out, **kw):
    return export_checkpoint(checkpoint, out, validate=False, **kw)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _export(tmp_path / "nope.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        _export(bad, tmp_path / "out")


def test_existing_output_needs_force(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        _export(checkpoint, out)
    assert (out / "keep.txt").exists()
    assert issubclass(OutputExistsError, ExportError) and issubclass(ExportError, MlvosError)


def test_size_not_multiple_of_stride(checkpoint, tmp_path):
    with pytest.raises(InputError, match="multiples of the model stride 32.*64x96"):
        _export(checkpoint, tmp_path / "out", size=(50, 90))


@pytest.mark.parametrize("capacity", [1, 0, -3])
def test_capacity_too_small(checkpoint, tmp_path, capacity):
    with pytest.raises(InputError, match="capacity must be an integer >= 2"):
        _export(checkpoint, tmp_path / "out", capacity=capacity)


def test_unknown_precision(checkpoint, tmp_path):
    with pytest.raises(InputError, match="unknown precision.*'int4'.*fp32, fp16"):
        _export(checkpoint, tmp_path / "out", precisions=["fp32", "int4"])


def test_opset_out_of_range(checkpoint, tmp_path):
    with pytest.raises(InputError, match="opset 21"):
        _export(checkpoint, tmp_path / "out", opset=21)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="mlvos")
    export_cli.register(parser.add_subparsers())
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def test_bad_read_priors(checkpoint, tmp_path):
    from mlvos.errors import ConfigError
    from mlvos.export.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="K <= 3840 that TensorRT 10.3's TopK takes"):
        _export(checkpoint, tmp_path / "out", read_topk=4000)
    with pytest.raises(ConfigError, match="read_kernel must be a finite number >= 0"):
        _export(checkpoint, tmp_path / "out", read_kernel=-1.0)
    assert not (tmp_path / "out").exists()


def test_cli_argument_errors(tmp_path):
    with pytest.raises(InputError, match="needs --checkpoint CKPT and --out DIR"):
        _cli(["--out", str(tmp_path / "o")])
    with pytest.raises(InputError, match="both --height and --width"):
        _cli(["--checkpoint", "c.pt", "--out", str(tmp_path / "o"), "--height", "64"])
    with pytest.raises(InputError, match="--check DIR takes no"):
        _cli(["--check", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(ManifestError, match="is not an export directory: manifest.json is missing"):
        _cli(["--check", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse rejects it via choices=
        _cli(["--checkpoint", "c.pt", "--out", "o", "--precision", "int8"])


def test_help_needs_no_torch_or_onnx():
    code = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxruntime", "onnxslim", "modelopt"):
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, _Block())
        import argparse
        from mlvos.export import cli
        parser = argparse.ArgumentParser(prog="mlvos")
        cli.register(parser.add_subparsers())
        try:
            parser.parse_args(["export", "--help"])
        except SystemExit as e:
            assert e.code == 0
        assert "torch" not in sys.modules and "onnx" not in sys.modules
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--checkpoint" in r.stdout and "--no-validate" in r.stdout


def test_static_export_takes_its_own_size_for_representative_data(checkpoint, tmp_path):
    with pytest.raises(InputError, match="representative data of its own size"):
        _export(checkpoint, tmp_path / "out", size=(64, 96), representative_size=(96, 128))
