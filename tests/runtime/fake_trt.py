"""Stand-ins for `tensorrt` and `cuda.bindings.runtime` that run the TensorRT backend's real code
on the CPU (used by test_trt_fake.py and, as the "fake" device, by test_trt_gpu.py).

They implement only the calls runtime/backends/trt and cuda_mem.py make (their names are checked
against the real 10.3/11.4 API by test_trt_api.py): "device memory" is host memory at real
addresses, so every cudaMemcpy/cudaMemcpy2D/cudaMemset the runner issues really moves bytes (with
bounds checks against the allocations), and an "engine" runs its ONNX graph with onnxruntime on the
bytes at the addresses bound to it. What they cannot verify (real kernels, FP16/INT8 numerics,
capture legality) needs a real GPU.

Not a test module: tests/runtime/conftest.py loads it by path (pytest runs with
--import-mode=importlib, where test files cannot import each other) and installs it through the
`fakes` fixture.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from pathlib import Path

import numpy as np

from mlvos.runtime.backends import cuda_mem


# ------------------------------------------------------------------------------- fake CUDA
class _Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidValue = 1


class _Kind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class FakeCuda:
    """The subset of cuda.bindings.runtime that cuda_mem.py calls."""

    cudaError_t = _Err
    cudaMemcpyKind = _Kind
    cudaStreamNonBlocking = 1
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self, gpu: str = "Fake GPU", cc: tuple[int, int] = (8, 7)):
        self.allocs: dict[int, ctypes.Array] = {}
        self.streams: set[int] = set()
        self.capturing: dict[int, list] = {}
        self.gpu, self.cc = gpu, cc
        self.fail: set[str] = set()  # call names that should fail
        self.captures = self.launches = 0
        self.graphs_alive = 0

    # device
    def cudaGetDeviceCount(self):
        return _Err.cudaSuccess, 1

    def cudaGetDeviceProperties(self, device):
        prop = types.SimpleNamespace(
            name=self.gpu.encode() + b"\0\0", major=self.cc[0], minor=self.cc[1], totalGlobalMem=1
        )
        return _Err.cudaSuccess, prop

    def cudaSetDevice(self, device):
        return (_Err.cudaSuccess,)

    def cudaGetErrorName(self, err):
        return _Err.cudaSuccess, _Err(err).name.encode()

    def cudaGetErrorString(self, err):
        return _Err.cudaSuccess, b"fake error"

    # memory
    def cudaMalloc(self, n):
        if "cudaMalloc" in self.fail:
            return _Err.cudaErrorMemoryAllocation, None
        buf = (ctypes.c_char * n)()
        ctypes.memset(buf, 0x5A, n)  # garbage, like real cudaMalloc: zeroing is the runner's job
        self.allocs[ctypes.addressof(buf)] = buf
        return _Err.cudaSuccess, ctypes.addressof(buf)

    def cudaFree(self, ptr):
        if self.allocs.pop(ptr, None) is None:
            return (_Err.cudaErrorInvalidValue,)
        return (_Err.cudaSuccess,)

    def inside(self, ptr: int, n: int) -> bool:
        return any(b <= ptr and ptr + n <= b + len(a) for b, a in self.allocs.items())

    def _dev(self, ptr, n, what):
        if not self.inside(ptr, n):
            raise AssertionError(f"{what}: [{ptr:#x}, +{n}) is outside every device allocation")

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert stream in self.streams and stream not in self.capturing
        if kind in (_Kind.cudaMemcpyDeviceToHost, _Kind.cudaMemcpyDeviceToDevice):
            self._dev(src, n, "memcpy source")
        if kind in (_Kind.cudaMemcpyHostToDevice, _Kind.cudaMemcpyDeviceToDevice):
            self._dev(dst, n, "memcpy destination")
        ctypes.memmove(dst, src, n)
        return (_Err.cudaSuccess,)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, rows, kind, stream):
        assert kind == _Kind.cudaMemcpyDeviceToDevice and width <= min(dpitch, spitch)
        for r in range(rows):
            self._dev(src + r * spitch, width, "memcpy2D source row")
            self._dev(dst + r * dpitch, width, "memcpy2D destination row")
            ctypes.memmove(dst + r * dpitch, src + r * spitch, width)
        return (_Err.cudaSuccess,)

    def cudaMemsetAsync(self, ptr, value, n, stream):
        self._dev(ptr, n, "memset")
        ctypes.memset(ptr, value, n)
        return (_Err.cudaSuccess,)

    # streams and graphs
    def cudaStreamCreateWithFlags(self, flags):
        handle = 1000 + len(self.streams) + 1
        self.streams.add(handle)
        return _Err.cudaSuccess, handle

    def cudaStreamSynchronize(self, stream):
        return (_Err.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        self.streams.discard(stream)
        return (_Err.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing[stream] = []
        return (_Err.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        ops = self.capturing.pop(stream)
        self.graphs_alive += 1
        return _Err.cudaSuccess, ops

    def cudaGraphInstantiate(self, graph, flags):
        self.captures += 1
        self.graphs_alive += 1
        return _Err.cudaSuccess, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for op in graph_exec:
            op()
        return (_Err.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):
        self.graphs_alive -= 1
        return (_Err.cudaSuccess,)

    def cudaGraphDestroy(self, graph):
        self.graphs_alive -= 1
        return (_Err.cudaSuccess,)

    # helpers for the fake engines
    def read(self, ptr, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self._dev(ptr, n, "engine input")
        raw = (ctypes.c_char * n).from_address(ptr)
        return np.frombuffer(raw, dtype).reshape(shape).copy()

    def write(self, ptr, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._dev(ptr, array.nbytes, "engine output")
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)


# --------------------------------------------------------------------------- fake TensorRT
def make_fake_trt(cuda: FakeCuda, version: str = "10.3.0") -> types.ModuleType:
    """A `tensorrt` stand-in; BuilderFlag.FP16 exists only for 10.x versions, as in the real API."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built = []  # (network flags, builder flags, source onnx) per build
    trt.loaded_timing_caches = []

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = 0, 1, 2, 3

        def __init__(self, severity=2):
            self.severity = severity

    ten = version.startswith("10.")
    flags = ["GPU_FALLBACK", "TF32"] + (["FP16", "OBEY_PRECISION_CONSTRAINTS"] if ten else [])
    trt.DataType = types.SimpleNamespace(FLOAT="float32", HALF="float16", UINT8="uint8")
    trt.constraints = []  # per build: (onnx file, layers pinned to FP32, I/O dtypes set)
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DeviceType = types.SimpleNamespace(DLA="DLA", GPU="GPU")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT", NONE="NONE")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(
        STATIC="STATIC", USER_MANAGED="USER_MANAGED"
    )
    trt.nptype = lambda dtype: np.dtype(dtype).type
    trt.Logger = Logger

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.IProgressMonitor = IProgressMonitor

    class Tensor:
        def __init__(self, name):
            self.name, self.dtype = name, None  # None: the ONNX graph's own type

    class Layer:
        """One ONNX node as TensorRT's parser names it; precision setters exist in 10.x only."""

        def __init__(self, name, num_outputs):
            self.name, self.num_outputs = name, num_outputs
            self.pinned, self.output_types = None, {}

        def __setattr__(self, key, value):
            if key == "precision":
                assert ten, "ILayer.precision does not exist in TensorRT 11"
                key = "pinned"
            object.__setattr__(self, key, value)

        def set_output_type(self, index, dtype):
            assert ten, "ILayer.set_output_type does not exist in TensorRT 11"
            assert 0 <= index < self.num_outputs
            self.output_types[index] = dtype

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs, self.layers = [], [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        @property
        def num_outputs(self):
            return len(self.outputs)

        @property
        def num_layers(self):
            return len(self.layers)

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

        def get_layer(self, i):
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            import onnx

            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.network.inputs = [Tensor(i.name) for i in sess.get_inputs()]
            self.network.outputs = [Tensor(o.name) for o in sess.get_outputs()]
            graph = onnx.load(path, load_external_data=False).graph
            self.network.layers = [Layer(n.name, len(n.output)) for n in graph.node]
            self.network.path = path
            return True

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.progress_monitor = [], [], None
            self.timing = None

        def set_flag(self, flag):
            self.flags.append(flag)

        def clear_flag(self, flag):
            self.flags.append(f"-{flag}")

        def set_memory_pool_limit(self, pool, size):
            pass

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            trt.loaded_timing_caches.append(cache.data)
            self.timing = cache
            return True

        def get_timing_cache(self):
            return self.timing

    class OptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (name, lo, opt, hi)
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger):
            assert cuda.allocs is not None  # the device was checked first

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            mon = config.progress_monitor
            mon.phase_start("Building engine", None, 2)
            mon.step_complete("Building engine", 0)
            mon.phase_finish("Building engine")
            trt.built.append((network.flags, list(config.flags), Path(network.path).name))
            io_dtypes = {t.name: t.dtype for t in [*network.inputs, *network.outputs] if t.dtype}
            trt.constraints.append((
                Path(network.path).name,
                sorted(la.name for la in network.layers if la.pinned == trt.DataType.FLOAT
                       and all(la.output_types.get(j) == trt.DataType.FLOAT
                               for j in range(la.num_outputs))),
                io_dtypes,
            ))
            shapes = config.profiles[0].shapes if config.profiles else {}
            return json.dumps(
                {"onnx": network.path, "shapes": shapes, "io_dtypes": io_dtypes}
            ).encode()

    class Engine:
        def __init__(self, spec):
            self.sess = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.profile = spec["shapes"]
            self.inputs = {i.name: i for i in self.sess.get_inputs()}
            self.outputs = {o.name: o for o in self.sess.get_outputs()}
            self.names = [*self.inputs, *self.outputs]
            self.io_dtypes = spec.get("io_dtypes", {})  # I/O types set on the network
            self.device_memory_size_v2 = 4096

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return "INPUT" if name in self.inputs else "OUTPUT"

        def onnx_dtype(self, name):
            t = (self.inputs.get(name) or self.outputs[name]).type
            return {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(
                t, t[7:-1] if t.startswith("tensor(") else t
            )

        def get_tensor_dtype(self, name):
            if name in self.io_dtypes:
                return self.io_dtypes[name]
            t = (self.inputs.get(name) or self.outputs[name]).type
            return {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(
                t, t[7:-1] if t.startswith("tensor(") else t
            )

        def get_tensor_shape(self, name):
            shape = (self.inputs.get(name) or self.outputs[name]).shape
            return tuple(d if isinstance(d, int) else -1 for d in shape)

        def get_tensor_profile_shape(self, name, index):
            assert index == 0
            return [tuple(s) for s in self.profile[name]]

        def create_execution_context(self, strategy):
            assert strategy == "USER_MANAGED"
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.shapes, self.addresses = {}, {}
            self.scratch = None
            self.runs = 0

        def set_device_memory(self, ptr, size):
            assert cuda.inside(ptr, size)
            self.scratch = ptr

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.profile.get(name, [shape, shape, shape])
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(int(s) for s in shape)
            return True

        def get_tensor_shape(self, name):
            """Output shapes by the graph's symbolic dims ("O", "H/16", ...) bound from the input
            shapes, as TensorRT's shape inference gives them (without running the graph: at a
            profile's maximum that would not fit a CPU's memory)."""
            if name in self.engine.inputs:
                return self.shapes[name]
            from mlvos.runtime.spec import resolve_shape

            env = {}
            for n, inp in self.engine.inputs.items():
                for dim, value in zip(inp.shape, self.shapes[n]):
                    if isinstance(dim, str):
                        base, _, div = dim.partition("/")
                        env[base] = value * int(div) if div else value
            return tuple(resolve_shape(tuple(self.engine.outputs[name].shape), env))

        def set_tensor_address(self, name, ptr):
            assert name in self.engine.names
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert self.scratch is not None, "set_device_memory was not called"
            shapes, addresses = dict(self.shapes), dict(self.addresses)

            def run():
                self.runs += 1
                eng = self.engine
                feeds = {  # I/O set to another type converts at the engine's boundary
                    n: cuda.read(addresses[n], shapes[n], eng.get_tensor_dtype(n)).astype(
                        eng.onnx_dtype(n), copy=False)
                    for n in eng.inputs
                }
                outs = eng.sess.run(list(eng.outputs), feeds)
                for n, v in zip(eng.outputs, outs):
                    cuda.write(addresses[n], v.astype(eng.get_tensor_dtype(n), copy=False))

            if stream_handle in cuda.capturing:
                cuda.capturing[stream_handle].append(run)
            else:
                run()
            return True

    class Runtime:
        def __init__(self, logger):
            assert cuda.allocs is not None
            self.DLA_core = -1

        def deserialize_cuda_engine(self, data):
            try:
                return Engine(json.loads(bytes(data)))
            except ValueError:
                return None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def install(monkeypatch, version: str = "10.3.0") -> types.SimpleNamespace:
    """Put FakeCuda and a fake TensorRT `version` in sys.modules for one test (undone by
    `monkeypatch`).

    Returns:
        namespace with `cuda` (the FakeCuda), `trt` (the fake module) and `use_trt(version)`,
        which swaps in another TensorRT version and returns it.
    """
    cuda = FakeCuda()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cuda
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
    monkeypatch.setattr(cuda_mem, "_RT", None)  # the probe's cached module: re-imported
    state = types.SimpleNamespace(cuda=cuda, trt=None)

    def use_trt(version: str = "10.3.0") -> types.ModuleType:
        state.trt = make_fake_trt(cuda, version)
        monkeypatch.setitem(sys.modules, "tensorrt", state.trt)
        return state.trt

    use_trt(version)
    state.use_trt = use_trt
    return state
