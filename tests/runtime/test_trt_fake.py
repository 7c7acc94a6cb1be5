"""TrtRunner, the engine build and the engine cache on CPU, against stand-ins for `tensorrt` and
`cuda.bindings.runtime`.

The stand-ins implement only the calls trt.py makes (their names are checked against the real
10.3/11.4 API by test_trt_api.py): "device memory" is host memory at real addresses, so every
cudaMemcpy/cudaMemcpy2D/cudaMemset the runner issues really moves bytes (with bounds checks
against the allocations), and an "engine" runs its ONNX graph with onnxruntime on the bytes at
the addresses bound to it. That verifies the runner's data flow - bank layout, in-place slot
writes, object moves, buffer sharing between graphs, shapes, CUDA-graph capture/invalidation -
against OrtRunner frame by frame. What it cannot verify (real kernels, FP16 numerics, capture
legality) is left to test_trt_gpu.py.
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mlvos.errors import InputError
from mlvos.runtime.backends import cuda_mem
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph, Tensor

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # the export fixture builds a tiny checkpoint
pytestmark = pytest.mark.slow  # one tiny export plus a few short videos on onnxruntime


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

    flags = ["GPU_FALLBACK", "TF32"] + (["FP16"] if version.startswith("10.") else [])
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

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.network.inputs = [types.SimpleNamespace(name=i.name) for i in sess.get_inputs()]
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
            shapes = config.profiles[0].shapes if config.profiles else {}
            return json.dumps({"onnx": network.path, "shapes": shapes}).encode()

    class Engine:
        def __init__(self, spec):
            self.sess = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
            self.profile = spec["shapes"]
            self.inputs = {i.name: i for i in self.sess.get_inputs()}
            self.outputs = {o.name: o for o in self.sess.get_outputs()}
            self.names = [*self.inputs, *self.outputs]
            self.device_memory_size_v2 = 4096

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return "INPUT" if name in self.inputs else "OUTPUT"

        def get_tensor_dtype(self, name):
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
            if name in self.engine.inputs:
                return self.shapes[name]
            feeds = {
                n: np.zeros(self.shapes[n], trt.nptype(self.engine.get_tensor_dtype(n)))
                for n in self.engine.inputs
            }
            out = self.engine.sess.run([name], feeds)[0]
            return out.shape

        def set_tensor_address(self, name, ptr):
            assert name in self.engine.names
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):
            assert self.scratch is not None, "set_device_memory was not called"
            shapes, addresses = dict(self.shapes), dict(self.addresses)

            def run():
                self.runs += 1
                feeds = {
                    n: cuda.read(addresses[n], shapes[n], self.engine.get_tensor_dtype(n))
                    for n in self.engine.inputs
                }
                outs = self.engine.sess.run(list(self.engine.outputs), feeds)
                for n, v in zip(self.engine.outputs, outs):
                    cuda.write(addresses[n], v)

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


@pytest.fixture()
def fakes(monkeypatch):
    """Install the stand-ins; yields a setter for the TensorRT version."""
    cuda = FakeCuda()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cuda
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
    monkeypatch.setattr(cuda_mem, "_RT", None)
    state = types.SimpleNamespace(cuda=cuda, trt=None)

    def use_trt(version: str = "10.3.0"):
        state.trt = make_fake_trt(cuda, version)
        monkeypatch.setitem(sys.modules, "tensorrt", state.trt)
        return state.trt

    use_trt()
    state.use_trt = use_trt
    return state


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from mlvos.export import export_checkpoint
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.registry import build_model

    root = tmp_path_factory.mktemp("trt_fake")
    ckpt = save_checkpoint(root / "tiny.pt", build_model("tiny", seed=0))
    return export_checkpoint(ckpt, root / "export", validate=False)


SMALL = dict(
    max_objects=4, opt_objects=2, max_height=192, max_width=320, opt_height=160, opt_width=288
)


def _runner(export_dir, tmp_path, precision="fp32", **kw):
    from mlvos.runtime.backends.trt import Profile, TrtRunner

    kw.setdefault("profile", Profile(**SMALL))
    return TrtRunner(
        Manifest.load(export_dir),
        precision,
        engine_dir=tmp_path / "engines",
        **kw,
    )


def _propagate(runner, frames, masks, *, later=None, remove_at=None):
    """Run a VideoPredictor; `later` = (frame, mask) adds objects mid-video, `remove_at` =
    (frame, id) drops one."""
    from mlvos.runtime.predictor import VideoPredictor

    probs = []
    read_decode = runner.read_decode

    def recording_read_decode(query, objects):
        p, labels = read_decode(query, objects)
        probs.append(np.array(runner.download(p)))
        return p, labels

    runner.read_decode = recording_read_decode  # the soft probabilities, for a sharper check
    pred = VideoPredictor(runner, mem_every=2)
    pred.add_mask(0, masks[0])
    out = []
    for t, frame in enumerate(frames):
        if later and t == later[0]:
            pred.add_mask(t, later[1])
        if remove_at and t == remove_at[0]:
            pred.remove_object(remove_at[1])
        out.append(pred.step(frame))
    return out, probs


def _video(seed=3, frames=12, h=150, w=270, objects=3):
    from mlvos.data.synth import synth_sequence

    pairs = list(synth_sequence(seed, frames, h, w, num_objects=objects))
    return [f for f, _ in pairs], [m for _, m in pairs]


def _first_mask_subset(mask, keep):
    return np.where(np.isin(mask, keep), mask, 0).astype(np.uint8)


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "cuda-graph"])
def test_runner_matches_ort_frame_by_frame(fakes, export_dir, tmp_path, cuda_graph):
    """Bank writes, growth (an object added at frame 4), compaction (one removed at frame 8),
    eviction (12 frames, capacity 6) and buffer sharing reproduce OrtRunner exactly."""
    from mlvos.runtime.backends.onnxrt import OrtRunner

    frames, masks = _video()
    first = _first_mask_subset(masks[0], [1, 2])
    plan = dict(later=(4, _first_mask_subset(masks[4], [3])), remove_at=(8, 1))
    ref, ref_probs = _propagate(
        OrtRunner(Manifest.load(export_dir), "fp32"), frames, [first], **plan
    )
    with _runner(export_dir, tmp_path, cuda_graph=cuda_graph) as runner:
        got, got_probs = _propagate(runner, frames, [first], **plan)
        assert runner.max_objects == 4 and runner.max_size == (192, 320)
    for t, (a, b) in enumerate(zip(ref, got)):
        assert np.array_equal(a, b), f"frame {t}: {np.mean(a != b):.4f} of the pixels differ"
    assert len(ref_probs) == len(got_probs) == len(frames) - 1
    for t, (a, b) in enumerate(zip(ref_probs, got_probs)):
        assert a.shape == b.shape and np.array_equal(a, b), f"read_decode after frame {t}"
    assert [p.shape[0] for p in got_probs] == [2] * 4 + [3] * 3 + [2] * 4
    if cuda_graph:
        # Captured once per (objects, size): 2 objects, then 3, then 2 again after the removal.
        assert fakes.cuda.captures == 3 and fakes.cuda.launches >= 6
    else:
        assert fakes.cuda.captures == 0
    assert not fakes.cuda.allocs and not fakes.cuda.streams and fakes.cuda.graphs_alive == 0


def test_per_graph_outputs_match_ort(fakes, export_dir, tmp_path):
    """encode_query / encode_memory / read_decode outputs equal onnxruntime's on the same
    inputs, including a bank filled through write_slot into a non-zero slot."""
    import onnxruntime as ort

    manifest = Manifest.load(export_dir)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 3, 160, 288), dtype=np.uint8)
    probs = rng.random((2, 160, 288), dtype=np.float32)
    sess = {g: ort.InferenceSession(str(manifest.graph(g, "fp32").path)) for g in Graph.ALL}
    with _runner(export_dir, tmp_path) as r:
        fd = r.upload(frame)
        q = r.encode_query(fd)
        ref_q = dict(
            zip(
                [o.name for o in sess[Graph.QUERY_ENCODER].get_outputs()],
                sess[Graph.QUERY_ENCODER].run(None, {Tensor.FRAME: frame}),
            )
        )
        for name, value in q.items():
            np.testing.assert_array_equal(r.download(value), ref_q[name])
        # tiny shares keys: the memory graph takes the frame's query key
        rk, rv = sess[Graph.MEMORY_ENCODER].run(
            None, {Tensor.FRAME: frame, Tensor.PROBS: probs, Tensor.QUERY_KEY: ref_q["query_key"]}
        )
        # without the frame's query features the runner encodes the frame as a query first
        k, v = r.encode_memory(fd, r.upload(probs))
        np.testing.assert_array_equal(r.download(k), rk)
        np.testing.assert_array_equal(r.download(v), rv)
        k, v = r.encode_memory(fd, r.upload(probs), q)
        np.testing.assert_array_equal(r.download(k), rk)
        np.testing.assert_array_equal(r.download(v), rv)
        r.allocate_bank(3, 160, 288)
        r.write_slot(4, k, v, 2)
        valid = np.zeros((3, r.capacity), np.float32)
        valid[:2, 4] = 1
        r.set_valid(valid)
        p, labels = r.read_decode(q, 2)
        bank_k = np.zeros((2, r.capacity, *rk.shape[1:]), np.float32)
        bank_v = np.zeros((2, r.capacity, *rv.shape[1:]), np.float32)
        bank_k[:, 4], bank_v[:, 4] = rk, rv
        feeds = dict(ref_q, bank_key=bank_k, bank_value=bank_v, bank_valid=valid[:2])
        _, rp, rl = sess[Graph.READ_DECODER].run(None, feeds)
        np.testing.assert_array_equal(r.download(p), rp)
        np.testing.assert_array_equal(r.download(labels), rl)
        # move_object copies object 1's whole memory onto object 0.
        r.move_object(1, 0)
        r.set_valid(valid)
        p2, _ = r.read_decode(q, 1)
        feeds = dict(ref_q, bank_key=bank_k[1:], bank_value=bank_v[1:], bank_valid=valid[:1])
        np.testing.assert_array_equal(r.download(p2), sess[Graph.READ_DECODER].run(None, feeds)[1])


@pytest.mark.parametrize(
    ("version", "source", "network_flags", "builder_flags"),
    [
        ("10.3.0", "fp32", 0, ["FP16"]),  # JetPack 6: weak typing + FP16 flag
        ("10.13.0", "fp16", 1 << 5, []),  # strong typing complete
        ("11.4.0.106", "fp16", 1 << 5, []),  # no BuilderFlag.FP16 at all
    ],
)
def test_fp16_recipe_per_version(
    fakes, export_dir, tmp_path, version, source, network_flags, builder_flags
):
    trt = fakes.use_trt(version)
    with _runner(export_dir, tmp_path, precision="fp16") as r:
        assert [b[2] for b in trt.built] == [f"{g}.{source}.onnx" for g in Graph.ALL]
        assert all(b[0] == network_flags and b[1] == builder_flags for b in trt.built)
        # Strongly typed engines carry the fp16 graph's I/O types: the bank is float16.
        expected = np.float16 if source == "fp16" else np.float32
        assert r.dtypes[Tensor.BANK_KEY] == expected and r.dtypes[Tensor.LABELS] == np.uint8


def test_fp16_video_matches_ort_fp16(fakes, export_dir, tmp_path):
    """The strongly typed fp16 path end to end (float16 bank and query features, 2-byte slot
    copies) reproduces OrtRunner on the same fp16 graphs. FP16-vs-FP32 accuracy with real
    kernels is test_trt_gpu's job."""
    from mlvos.runtime.backends.onnxrt import OrtRunner

    fakes.use_trt("11.4.0.106")
    frames, masks = _video(seed=5, frames=8)
    ref, ref_probs = _propagate(OrtRunner(Manifest.load(export_dir), "fp16"), frames, masks)
    with _runner(export_dir, tmp_path, precision="fp16") as r:
        got, got_probs = _propagate(r, frames, masks)
    for t, (a, b) in enumerate(zip(ref, got)):
        assert np.array_equal(a, b), f"frame {t}"
    for a, b in zip(ref_probs, got_probs):
        np.testing.assert_array_equal(a, b)


def test_engine_cache_reuse_and_staleness(fakes, export_dir, tmp_path):
    from mlvos.runtime.backends.trt import EngineCacheError, Profile, ensure_engines

    manifest = Manifest.load(export_dir)
    engines = tmp_path / "engines"
    kw = dict(engine_dir=engines, profile=Profile(**SMALL))
    first = ensure_engines(manifest, "fp32", **kw)
    assert all(r.built for r in first.values()) and len(fakes.trt.built) == 3
    # One timing cache, loaded by each build and saved after it.
    assert fakes.trt.loaded_timing_caches == [b"", b"+", b"++"]
    cache_files = list(engines.glob("timing-*.cache"))
    assert len(cache_files) == 1 and "Fake-GPU" in cache_files[0].name
    again = ensure_engines(manifest, "fp32", **kw)
    assert not any(r.built for r in again.values()) and len(fakes.trt.built) == 3
    # No profile given: the cached engines' profile is reused, not the default one.
    assert not any(
        r.built for r in ensure_engines(manifest, "fp32", engine_dir=engines).values()
    )
    # Another TensorRT version: refused without building, rebuilt with building.
    fakes.use_trt("10.16.1")
    with pytest.raises(EngineCacheError, match=r"tensorrt: cached '10.3.0', needed '10.16.1'"):
        ensure_engines(manifest, "fp32", allow_build=False, **kw)
    rebuilt = ensure_engines(manifest, "fp32", **kw)
    assert all(r.built for r in rebuilt.values())
    assert fakes.trt.loaded_timing_caches[0] == b""  # a new version starts its own cache
    # Another GPU: stale.
    fakes.cuda.gpu = "Other GPU"
    with pytest.raises(EngineCacheError, match="gpu: cached 'Fake GPU', needed 'Other GPU'"):
        ensure_engines(manifest, "fp32", allow_build=False, **kw)
    fakes.cuda.gpu = "Fake GPU"
    # A modified engine file is never deserialized.
    path = rebuilt[Graph.READ_DECODER].path
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(EngineCacheError, match="does not match its metadata"):
        ensure_engines(manifest, "fp32", allow_build=False, **kw)
    # A different profile is a different engine.
    with pytest.raises(EngineCacheError, match="profile"):
        ensure_engines(
            manifest,
            "fp32",
            allow_build=False,
            engine_dir=engines,
            profile=Profile(**dict(SMALL, max_objects=5)),
        )


def test_limits_raise_clear_errors(fakes, export_dir, tmp_path):
    with _runner(export_dir, tmp_path) as r:
        with pytest.raises(InputError, match="exceeds the engine's maximum"):
            r.upload(np.zeros((1, 3, 224, 320), np.uint8))
        with pytest.raises(InputError, match="--max-objects 5"):
            r.read_decode({}, 5)
        r.allocate_bank(8, 160, 288)  # more than the engines hold: clamped, not an error
        assert r._bank_objects == 4


def test_cuda_failures_name_the_call(fakes, export_dir, tmp_path):
    fakes.cuda.fail.add("cudaMalloc")
    with pytest.raises(
        cuda_mem.CudaError,
        match=r"cudaMalloc\(.*\) failed with "
        r"cudaErrorMemoryAllocation",
    ):
        with _runner(export_dir, tmp_path):
            pass
    assert not fakes.cuda.streams  # open() cleaned up after itself


def test_engine_cli_builds_then_reuses(fakes, export_dir, tmp_path, capsys):
    from mlvos.runtime import cli

    parser = argparse.ArgumentParser()
    cli.register_engine(parser.add_subparsers())
    argv = [
        "engine",
        "--model",
        str(export_dir),
        "--precision",
        "fp32",
        "--out",
        str(tmp_path / "e"),
        "--max-height",
        "180",
        "--max-width",
        "300",
        "--max-objects",
        "3",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("built") == 3 and "up to 3 objects at 192x320" in out
    args = parser.parse_args([*argv, "--check"])
    assert args.func(args) == 0 and capsys.readouterr().out.count("cached") == 3
    fakes.use_trt("10.4.0")
    assert args.func(args) == 1 and "needs a build" in capsys.readouterr().out
