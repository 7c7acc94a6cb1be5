"""What an engine is specific to (the cache key's target), and the CUDA version diagnostics
(pure Python: a stand-in cuda-python runtime, no GPU)."""

from __future__ import annotations

import enum
import types

import pytest

from mlvos.runtime.backends import cuda_mem
from mlvos.runtime.backends.trt import cache


@pytest.mark.parametrize(
    "names, major",
    [(["tensorrt-cu12", "tensorrt_cu12_libs", "tensorrt-cu12-bindings"], "12"),
     (["tensorrt_cu13"], "13"), (["tensorrt"], "unknown"), (["tensorrt-cu12", "tensorrt-cu13"],
                                                           "unknown")],
)
def test_tensorrt_cuda_major_from_the_wheel_name(monkeypatch, names, major):
    import importlib.metadata

    dists = [types.SimpleNamespace(metadata={"Name": n}) for n in [*names, "numpy"]]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: dists)
    assert cache.tensorrt_cuda_major() == major


class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35


def _runtime(driver: int, runtime: int):
    return types.SimpleNamespace(
        cudaError_t=_Err,
        cudaDriverGetVersion=lambda: (_Err.cudaSuccess, driver),
        cudaRuntimeGetVersion=lambda: (_Err.cudaSuccess, runtime),
        cudaGetDeviceCount=lambda: (_Err.cudaErrorInsufficientDriver, 0),
        cudaGetErrorName=lambda e: (0, b"cudaErrorInsufficientDriver"),
        cudaGetErrorString=lambda e: (0, b"CUDA driver version is insufficient"),
    )


def test_insufficient_driver_names_the_cuda_python_fix(monkeypatch):
    monkeypatch.setattr(cuda_mem, "_RT", _runtime(12060, 13000))
    assert cuda_mem.cuda_versions() == {"driver": "12.6", "runtime": "13.0"}
    ok, why = cuda_mem.cuda_device_status()
    assert not ok and "driver supports CUDA 12.6" in why and "the CUDA 13.0 runtime" in why
    assert "pip install 'cuda-python>=12,<13'" in why
    monkeypatch.setattr(cuda_mem, "_RT", _runtime(0, 13000))
    assert "no NVIDIA driver is installed" in cuda_mem.cuda_device_status()[1]


def test_target_records_tensorrt_cuda_and_runtime(monkeypatch):
    monkeypatch.setattr(cuda_mem, "device_info", lambda device=0: types.SimpleNamespace(
        name="NVIDIA H100", compute_capability="9.0"))
    monkeypatch.setattr(cuda_mem, "cuda_versions", lambda: {"driver": "12.8", "runtime": "12.6"})
    monkeypatch.setattr(cache, "tensorrt_cuda_major", lambda: "12")
    target = cache.current_target(types.SimpleNamespace(__version__="10.3.0"))
    assert (target.tensorrt_cuda, target.cuda_runtime) == ("12", "12.6")
    other = cache.Target(**{**target.__dict__, "tensorrt_cuda": "13"})
    assert target != other  # a TensorRT build for another CUDA major means another engine
