"""Device memory, streams and CUDA graphs through cuda-python (`cuda.bindings.runtime`).

Everything here is a thin, checked wrapper: every CUDA call's status is tested and a failure
raises CudaError naming the call. cuda-python is imported lazily, so this module imports on a
machine without it (or without a GPU). `cuda_device_available()` is the guard to call before
creating any TensorRT object: TensorRT's Runtime segfaults on use when no device is present.

Requirement: cuda-python >= 12.3 (`cuda.bindings.runtime`, or the legacy `cuda.cudart` module of
releases before 12.6). pycuda is not supported: it is sdist-only and needs the CUDA toolkit.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlvos.errors import MissingDependencyError
from mlvos.runtime.errors import CudaError, NoCudaDeviceError

_RT: Any = None


def cudart() -> Any:
    """The cuda-python runtime module (imported on first use).

    Raises:
        MissingDependencyError: cuda-python is not installed.
    """
    global _RT
    if _RT is None:
        errors = []
        for name in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                _RT = importlib.import_module(name)
                break
            except ImportError as e:
                errors.append(f"{name}: {e}")
        else:
            raise MissingDependencyError(
                "the TensorRT backend needs cuda-python for device memory, which is not "
                f"importable ({'; '.join(errors)}). Install it with: pip install 'mlvos[trt]'"
            )
    return _RT


def _error_text(rt: Any, err: Any) -> str:
    try:
        name = rt.cudaGetErrorName(err)[1].decode()
        text = rt.cudaGetErrorString(err)[1].decode()
        return f"{name} ({int(err)}): {text}"
    except Exception:  # noqa: BLE001 - reporting must not hide the original failure
        return repr(err)


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result tuple `(status, *values)`; raise CudaError on failure.

    Returns:
        None, the single value, or a tuple of values.
    """
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        raise CudaError(
            f"{call} failed with {_error_text(rt, err)}; check the GPU driver, free device "
            "memory and that no earlier asynchronous error is pending"
        )
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_versions() -> dict[str, str]:
    """{"driver": CUDA version the driver supports ("none" without a driver), "runtime": CUDA
    version of the runtime cuda-python loads} as "12.6"-style strings; "unknown" where the query
    fails. Never raises (it explains why no device is usable)."""

    def text(v: int) -> str:
        return "none" if v == 0 else f"{v // 1000}.{v % 1000 // 10}"

    out = {"driver": "unknown", "runtime": "unknown"}
    try:
        rt = cudart()
        for key, call in (("driver", "cudaDriverGetVersion"), ("runtime", "cudaRuntimeGetVersion")):
            err, version = getattr(rt, call)()
            if err == rt.cudaError_t.cudaSuccess:
                out[key] = text(int(version))
    except Exception:  # noqa: BLE001 - best effort, for messages and cache keys
        pass
    return out


def _driver_hint(rt: Any) -> str:
    """Why cudaErrorInsufficientDriver, and the fix (the usual cause: a cuda-python built for a
    newer CUDA major than the driver supports)."""
    v = cuda_versions()
    if v["driver"] == "none":
        return "; no NVIDIA driver is installed (is this a GPU machine?)"
    if v["driver"] == "unknown" or v["runtime"] == "unknown":
        return ""
    major = v["driver"].split(".")[0]
    return (f"; the driver supports CUDA {v['driver']} but cuda-python loads the CUDA "
            f"{v['runtime']} runtime: pip install 'cuda-python>={major},<{int(major) + 1}' "
            "(the CUDA major of your driver and TensorRT)")


def cuda_device_status(device: int = 0) -> tuple[bool, str]:
    """(True, description) if CUDA device `device` is usable, else (False, why). Never raises."""
    try:
        rt = cudart()
    except Exception as e:  # noqa: BLE001 - any import problem means "no device"
        return False, str(e)
    try:
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess:
            hint = _driver_hint(rt) if err == getattr(
                rt.cudaError_t, "cudaErrorInsufficientDriver", None) else ""
            return False, f"cudaGetDeviceCount failed with {_error_text(rt, err)}{hint}"
        if count <= device:
            return False, f"{count} CUDA device(s) visible, device {device} requested"
        err, prop = rt.cudaGetDeviceProperties(device)
        if err != rt.cudaError_t.cudaSuccess:
            return False, f"cudaGetDeviceProperties failed with {_error_text(rt, err)}"
        return True, f"{_name(prop)} (compute capability {prop.major}.{prop.minor})"
    except Exception as e:  # noqa: BLE001 - a broken driver install must not crash the caller
        return False, f"CUDA probe failed: {e}"


def cuda_device_available(device: int = 0) -> bool:
    """Whether CUDA device `device` exists and its driver works. Never raises."""
    return cuda_device_status(device)[0]


def require_device(device: int = 0) -> None:
    """Raise a typed error unless CUDA device `device` is usable.

    Raises:
        MissingDependencyError: cuda-python is not installed.
        NoCudaDeviceError: no usable device.
    """
    cudart()
    ok, why = cuda_device_status(device)
    if not ok:
        raise NoCudaDeviceError(
            f"the TensorRT backend needs an NVIDIA GPU, but none is usable: {why}. Use "
            "--backend ort on machines without a GPU"
        )


def _name(prop: Any) -> str:
    name = prop.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name).strip()


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "8.7"
    total_memory: int  # bytes


def device_info(device: int = 0) -> DeviceInfo:
    """Name, compute capability and memory of CUDA device `device`."""
    rt = cudart()
    prop = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    return DeviceInfo(device, _name(prop), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))


def set_device(device: int) -> None:
    rt = cudart()
    check(rt.cudaSetDevice(device), "cudaSetDevice")


class Stream:
    """A non-blocking CUDA stream (CUDA-graph capture needs a non-default stream)."""

    def __init__(self) -> None:
        rt = cudart()
        self._stream = check(
            rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
        )
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle:
            check(cudart().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = 0


class DeviceBuffer:
    """`nbytes` bytes of device memory (cudaMalloc); `ptr` is the address as an int."""

    def __init__(self, nbytes: int, label: str = "buffer") -> None:
        self.nbytes = int(nbytes)
        self.label = label
        # cudaMalloc(0) may return a null pointer; TensorRT rejects null tensor addresses.
        self.ptr = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({label})"))

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), f"cudaFree({self.label})")
            self.ptr = 0


@dataclass(frozen=True)
class DeviceArray:
    """A typed view of device memory: what the runner hands to the predictor as "device" data.

    Shapes are C-contiguous; `ptr` points at element 0.
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)


def copy_htod(dst: int, src: np.ndarray, stream: Stream) -> None:
    """Host -> device copy of a C-contiguous array (queued on `stream`).

    A pageable source is staged by the driver before this returns, so `src` may be reused.
    """
    if not src.flags.c_contiguous:
        raise ValueError("copy_htod needs a C-contiguous host array")
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(
            dst,
            src.ctypes.data,
            src.nbytes,
            rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            stream.handle,
        ),
        "cudaMemcpyAsync(host->device)",
    )


def copy_dtoh(dst: np.ndarray, src: int, stream: Stream) -> None:
    """Device -> host copy into a C-contiguous array; synchronizes `stream` before returning."""
    if not dst.flags.c_contiguous:
        raise ValueError("copy_dtoh needs a C-contiguous host array")
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(
            dst.ctypes.data,
            src,
            dst.nbytes,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
            stream.handle,
        ),
        "cudaMemcpyAsync(device->host)",
    )
    stream.synchronize()


def copy_dtod(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    check(
        rt.cudaMemcpyAsync(
            dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle
        ),
        "cudaMemcpyAsync(device->device)",
    )


def copy_2d_dtod(
    dst: int, dpitch: int, src: int, spitch: int, width: int, rows: int, stream: Stream
) -> None:
    """Copy `rows` rows of `width` bytes between pitched device regions (strided scatter)."""
    rt = cudart()
    check(
        rt.cudaMemcpy2DAsync(
            dst,
            dpitch,
            src,
            spitch,
            width,
            rows,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
            stream.handle,
        ),
        "cudaMemcpy2DAsync(device->device)",
    )


def memset(ptr: int, value: int, nbytes: int, stream: Stream) -> None:
    check(cudart().cudaMemsetAsync(ptr, value, nbytes, stream.handle), "cudaMemsetAsync")


class CudaGraph:
    """Capture work queued on a stream once, replay it with one launch.

    Usage: `g = CudaGraph.capture(stream, enqueue)` where `enqueue()` queues the work and
    returns False if it could not be captured; then `g.launch(stream)`; `g.destroy()`.
    """

    def __init__(self, graph: Any, graph_exec: Any) -> None:
        self._graph, self._exec = graph, graph_exec

    @classmethod
    def capture(cls, stream: Stream, enqueue) -> CudaGraph | None:
        """Record `enqueue()` on `stream`; None if the work refused capture (fallback: eager)."""
        rt = cudart()
        check(
            rt.cudaStreamBeginCapture(
                stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            ),
            "cudaStreamBeginCapture",
        )
        try:
            ok = bool(enqueue())
        except BaseException:
            # Capture must always be ended, or the stream stays unusable; the original error wins.
            err, graph = rt.cudaStreamEndCapture(stream.handle)
            if err == rt.cudaError_t.cudaSuccess and graph is not None:
                rt.cudaGraphDestroy(graph)
            raise
        err, graph = rt.cudaStreamEndCapture(stream.handle)
        if not ok or err != rt.cudaError_t.cudaSuccess:
            # The work refused capture (or invalidated it); the caller runs it eagerly instead.
            if err == rt.cudaError_t.cudaSuccess and graph is not None:
                check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
            return None
        try:
            graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except CudaError:
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
            raise
        return cls(graph, graph_exec)

    def launch(self, stream: Stream) -> None:
        check(cudart().cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        rt = cudart()
        if self._exec is not None:
            check(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
        if self._graph is not None:
            check(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._graph = None
