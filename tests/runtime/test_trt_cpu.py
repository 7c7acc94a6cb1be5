"""The TensorRT backend on a machine without TensorRT, cuda-python or a GPU: imports, the device
guard (in subprocesses, since a TensorRT Runtime touched without a GPU segfaults), and the pure
Python parts (recipes, profiles, the engine-cache key)."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlvos.errors import InputError
from mlvos.runtime.backends import trt as trt_backend
from mlvos.runtime.backends.trt import (
    ENGINE_FORMAT,
    ENGINE_FORMAT_VERSION,
    Profile,
    Recipe,
    Target,
    check_cached,
    engine_key,
    engine_paths,
    key_mismatches,
    plan_recipe,
    profile_shapes,
    version_tuple,
)
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph, Tensor, resolve_shape

BLOCK = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ImportError(f"{{name}} is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)
# A `tensorrt` whose Builder/Runtime kill the process the way the real lean runtime does when no
# GPU is present: if the backend ever creates one before checking the device, the test sees it.
DEADLY_TRT = textwrap.dedent(
    """
    import os, types
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    def _die(*a, **k):
        os.write(2, b"tensorrt object created without a device check\\n")
        os.abort()
    trt.Builder = trt.Runtime = trt.Logger = _die
    trt.BuilderFlag = types.SimpleNamespace(FP16=1)
    sys.modules["tensorrt"] = trt
    """
)


def _run(code: str, blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=blocked) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _manifest(tmp_path: Path, static_size=None) -> Manifest:
    """A manifest with the real I/O contract but no ONNX files (graph(verify=False) only)."""

    def t(name, dtype, *shape):
        return {"name": name, "dtype": dtype, "shape": list(shape)}

    q = [
        t(Tensor.QUERY_KEY, "float32", 1, 32, "H/16", "W/16"),
        t(Tensor.QUERY_VALUE, "float32", 1, 64, "H/16", "W/16"),
        t(Tensor.SKIP8, "float32", 1, 32, "H/8", "W/8"),
        t(Tensor.SKIP4, "float32", 1, 32, "H/4", "W/4"),
    ]
    frame = t(Tensor.FRAME, "uint8", 1, 3, "H", "W")
    io = {
        Graph.QUERY_ENCODER: ([frame], q),
        Graph.MEMORY_ENCODER: (
            [frame, t(Tensor.PROBS, "float32", "O", "H", "W")],
            [
                t(Tensor.MEM_KEY, "float32", "O", 32, "H/16", "W/16"),
                t(Tensor.MEM_VALUE, "float32", "O", 64, "H/16", "W/16"),
            ],
        ),
        Graph.READ_DECODER: (
            q
            + [
                t(Tensor.BANK_KEY, "float32", "O", 6, 32, "H/16", "W/16"),
                t(Tensor.BANK_VALUE, "float32", "O", 6, 64, "H/16", "W/16"),
                t(Tensor.BANK_VALID, "float32", "O", 6),
            ],
            [t(Tensor.OBJ_PROBS, "float32", "O", "H", "W"), t(Tensor.LABELS, "uint8", "H", "W")],
        ),
    }
    graphs = {
        g: {"fp32": {"file": f"{g}.fp32.onnx", "sha256": "ab" * 32, "inputs": i, "outputs": o}}
        for g, (i, o) in io.items()
    }
    data = {
        "format": "mlvos-export",
        "graphs": graphs,
        "stride": 32,
        "capacity": 6,
        "static_size": static_size,
        "key_dim": 32,
        "value_dim": 64,
    }
    return Manifest(tmp_path, data)


# ------------------------------------------------------------------------ no TensorRT, no GPU
def test_backend_imports_and_refuses_cleanly_without_tensorrt_or_cuda(tmp_path):
    """Module import, the device probe and TrtRunner construction with tensorrt and cuda-python
    unavailable: a typed MlvosError naming the missing package, never a crash."""
    manifest = _manifest(tmp_path)
    r = _run(
        DEADLY_TRT
        + textwrap.dedent(
            f"""
        from mlvos.runtime.backends import cuda_mem, trt
        from mlvos.runtime import cli
        from mlvos.runtime.manifest import Manifest
        from mlvos.errors import MissingDependencyError
        assert cuda_mem.cuda_device_available() is False
        ok, why = cuda_mem.cuda_device_status()
        assert not ok and "cuda-python" in why, why
        m = Manifest(__import__("pathlib").Path({str(tmp_path)!r}), {manifest.data!r})
        try:
            trt.TrtRunner(m, "fp16")
        except MissingDependencyError as e:
            assert "mlvos[trt]" in str(e), e
            print("refused:", e)
        else:
            raise SystemExit("TrtRunner did not refuse")
        """
        ),
        blocked=("cuda",),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refused: the TensorRT backend needs cuda-python" in r.stdout


def test_module_imports_with_tensorrt_blocked():
    r = _run(
        """
        import mlvos.runtime.backends.trt, mlvos.runtime.backends.cuda_mem
        import mlvos.runtime.cli
        assert "tensorrt" not in sys.modules and "cuda" not in sys.modules
        print("ok")
        """,
        blocked=("tensorrt", "cuda", "torch", "onnx", "onnxruntime"),
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_no_gpu_with_cuda_python_installed(tmp_path):
    """With cuda-python present but no driver/GPU: False from the probe, NoCudaDeviceError from
    TrtRunner, and TensorRT never touched."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    probe = _run("from cuda.bindings import runtime as rt; print(rt.cudaGetDeviceCount()[0])", ())
    if probe.returncode == 0 and probe.stdout.strip().endswith("cudaSuccess: 0>"):
        pytest.skip("a CUDA device is present")
    manifest = _manifest(tmp_path)
    r = _run(
        DEADLY_TRT
        + textwrap.dedent(
            f"""
        from mlvos.runtime.backends import cuda_mem, trt
        from mlvos.runtime.manifest import Manifest
        assert cuda_mem.cuda_device_available() is False
        m = Manifest(__import__("pathlib").Path({str(tmp_path)!r}), {manifest.data!r})
        try:
            trt.TrtRunner(m, "fp16")
        except cuda_mem.NoCudaDeviceError as e:
            print("refused:", e)
        """
        ),
        blocked=(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refused: the TensorRT backend needs an NVIDIA GPU" in r.stdout


def test_engine_cli_help():
    from mlvos.runtime import cli

    parser = argparse.ArgumentParser(prog="mlvos")
    cli.register_engine(parser.add_subparsers())
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["engine", "--help"])
    assert e.value.code == 0
    assert cli.ENGINE_PRECISIONS == trt_backend.PRECISIONS
    assert cli.FP16_RECIPES == trt_backend.FP16_RECIPES


# ------------------------------------------------------------------------------- pure Python
@pytest.mark.parametrize(
    ("precision", "version", "has_flag", "mode", "expected"),
    [
        ("fp16", "10.3.0", True, "auto", Recipe("fp32", False, fp16_flag=True)),
        ("fp16", "10.11.0.33", True, "auto", Recipe("fp32", False, fp16_flag=True)),
        ("fp16", "10.12.0", True, "auto", Recipe("fp16", True)),
        ("fp16", "11.4.0.106", False, "auto", Recipe("fp16", True)),
        ("fp16", "10.3.0", True, "strong", Recipe("fp16", True)),
        ("int8", "10.3.0", True, "auto", Recipe("int8", True)),
        ("int8", "11.4.0.106", False, "auto", Recipe("int8", True)),
        ("fp32", "10.3.0", True, "auto", Recipe("fp32", False)),
        ("fp32", "11.0.0", False, "auto", Recipe("fp32", True)),
    ],
)
def test_plan_recipe(precision, version, has_flag, mode, expected):
    assert plan_recipe(precision, version, has_flag, mode) == expected


def test_plan_recipe_errors():
    with pytest.raises(InputError, match="no BuilderFlag.FP16"):
        plan_recipe("fp16", "11.4.0", False, "flag")
    with pytest.raises(InputError, match="unknown precision"):
        plan_recipe("bf16", "11.4.0", False)
    assert plan_recipe("fp32", "11.4.0", False, tf32=False).tf32 is False


def test_version_tuple():
    assert version_tuple("10.3.0.26") == (10, 3, 0, 26)
    assert version_tuple("11.4.0.106") == (11, 4, 0, 106)
    assert version_tuple("10.13.0a1.dev") == (10, 13, 0)


def test_profile_fitted_and_shapes(tmp_path):
    m = _manifest(tmp_path)
    p = Profile(
        max_objects=3, opt_objects=5, max_height=720, max_width=1280, opt_height=480, opt_width=854
    ).fitted(m)
    assert (p.max_height, p.max_width, p.opt_height, p.opt_width) == (736, 1280, 480, 864)
    assert p.opt_objects == 3  # clamped to the max
    shapes = profile_shapes(m.graph(Graph.READ_DECODER, "fp32", verify=False), p, m.stride)
    assert shapes[Tensor.BANK_KEY] == [[1, 6, 32, 2, 2], [3, 6, 32, 30, 54], [3, 6, 32, 46, 80]]
    assert shapes[Tensor.SKIP4] == [[1, 32, 8, 8], [1, 32, 120, 216], [1, 32, 184, 320]]
    assert shapes[Tensor.BANK_VALID] == [[1, 6], [3, 6], [3, 6]]
    # Static export: H and W pinned, O still dynamic.
    ms = _manifest(tmp_path, static_size=[256, 448])
    ps = Profile().fitted(ms)
    assert (ps.max_height, ps.opt_height, ps.max_width, ps.opt_width) == (256, 256, 448, 448)
    with pytest.raises(InputError, match="max objects"):
        Profile(max_objects=0).fitted(m)
    with pytest.raises(InputError, match="max height must be >= 32"):
        Profile(max_height=16).fitted(m)
    assert resolve_shape(("O", 6, "H/16"), {"O": 2, "H": 64}) == (2, 6, 4)


def _key(tmp_path, **over):
    m = _manifest(tmp_path)
    info = m.graph(Graph.QUERY_ENCODER, "fp32", verify=False)
    profile = Profile().fitted(m)
    args = dict(
        graph=info,
        precision="fp32",
        recipe=Recipe("fp32", False),
        target=Target("10.3.0", "Orin", "8.7", "aarch64", "unknown", "12.6"),
        profile=profile,
        shapes=profile_shapes(info, profile, m.stride),
        dla_core=None,
    )
    args.update(over)
    return engine_key(**args)


def _write_engine(tmp_path, key, data=b"serialized-engine"):
    engine, meta = engine_paths(tmp_path / "engines", key["graph"], key["precision"])
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(data)
    meta.write_text(
        json.dumps(
            {
                "format": ENGINE_FORMAT,
                "version": ENGINE_FORMAT_VERSION,
                "key": key,
                "engine_sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    )
    return engine


def _target(**changes) -> Target:
    """The Jetson target of _key (JetPack 6: apt TensorRT 10.3, CUDA 12.6), with `changes`."""
    return Target(**{**dict(tensorrt="10.3.0", gpu="Orin", compute_capability="8.7",
                            platform="aarch64", tensorrt_cuda="unknown", cuda_runtime="12.6"),
                     **changes})


def test_engine_cache_detects_every_kind_of_staleness(tmp_path):
    key = _key(tmp_path)
    engine = _write_engine(tmp_path, key)
    assert check_cached(engine, key) == []
    stale = {
        "tensorrt": _key(tmp_path, target=_target(tensorrt="11.4.0.106")),
        "gpu": _key(tmp_path, target=_target(gpu="NVIDIA H100")),
        "compute_capability": _key(tmp_path, target=_target(compute_capability="9.0")),
        "platform": _key(tmp_path, target=_target(platform="x86_64")),
        "tensorrt_cuda": _key(tmp_path, target=_target(tensorrt_cuda="12")),
        "cuda_runtime": _key(tmp_path, target=_target(cuda_runtime="13.0")),
        "recipe": _key(tmp_path, recipe=Recipe("fp32", True)),
        "precision": _key(tmp_path, precision="fp16"),
        "dla_core": _key(tmp_path, dla_core=0),
        "profile": _key(tmp_path, profile=Profile(max_objects=2)),
    }
    for field, other in stale.items():
        reasons = check_cached(engine, other)
        assert reasons and any(r.startswith(field) for r in reasons), (field, reasons)
    # ONNX changed (new export): the manifest's sha256 differs.
    m = _manifest(tmp_path)
    m.data["graphs"][Graph.QUERY_ENCODER]["fp32"]["sha256"] = "cd" * 32
    info = m.graph(Graph.QUERY_ENCODER, "fp32", verify=False)
    assert any(
        r.startswith("onnx_sha256") for r in check_cached(engine, _key(tmp_path, graph=info))
    )
    # Tampered / missing files.
    engine.write_bytes(b"serialized-engine, modified")
    assert "does not match its metadata" in check_cached(engine, key)[0]
    engine.with_name(engine.name + ".json").write_text("{not json")
    assert "missing or not" in check_cached(engine, key)[0]
    engine.unlink()
    assert "does not exist" in check_cached(engine, key)[0]


def test_key_mismatches_lists_both_sides():
    assert key_mismatches({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ["b: cached 3, needed 2"]
    assert key_mismatches({"a": 1}, {}) == ["a: cached None, needed 1"]
