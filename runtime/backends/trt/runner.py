"""TrtRunner: runs the three engines of one precision on one CUDA stream, with every I/O tensor
and the memory bank in preallocated device memory (see TrtRunner)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.errors import InputError
from mlvos.runtime.backends import cuda_mem
from mlvos.runtime.backends.base import Runner, nvtx_ranges, nvtx_stage
from mlvos.runtime.backends.cuda_mem import DeviceArray, DeviceBuffer, Stream
from mlvos.runtime.backends.trt.build import BuildOptions, ensure_engines
from mlvos.runtime.backends.trt.common import EngineCacheError, TrtError, _import_trt
from mlvos.runtime.backends.trt.plan import Profile
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph, Tensor, resolve_shape

# Named `log`, not `logger`: test_trt_api reads a `logger` as a TensorRT ILogger.
log = logging.getLogger(__name__)


class _Stage:
    """One graph's engine and execution context, with the I/O shapes last set on it."""

    def __init__(self, name: str, engine: Any, context: Any, io: dict[str, bool]):
        self.name = name
        self.engine = engine
        self.context = context
        self.io = io  # tensor name -> is an input
        self.outputs = [n for n, is_input in io.items() if not is_input]
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.out_shapes: dict[str, tuple[int, ...]] = {}

    def set_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """set_input_shape for the inputs whose shape changed; refresh the output shapes."""
        changed = False
        for name, shape in shapes.items():
            if self.shapes.get(name) != shape:
                if not self.context.set_input_shape(name, shape):
                    raise InputError(
                        f"{self.name}: input {name} shape {shape} is outside the engine's "
                        f"profile; rebuild with `mlvos engine` and larger --max-* values"
                    )
                self.shapes[name] = shape
                changed = True
        if changed or not self.out_shapes:
            self.out_shapes = {
                name: tuple(self.context.get_tensor_shape(name)) for name in self.outputs
            }

    def enqueue(self, stream: Stream) -> bool:
        return bool(self.context.execute_async_v3(stream.handle))


class TrtRunner(Runner):
    """Runner on TensorRT engines (built or reused through `ensure_engines`).

    Device memory (cuda-python): every I/O tensor has one buffer preallocated at the profile's
    maximum shape, shared by name between the graphs (the frame feeds both encoders; the query
    encoder's outputs are the read decoder's inputs). The bank (O_max, T, C, h, w) lives on the
    device and is written in place; per frame only the frame goes up and only the label map comes
    back. The three engines run on one CUDA stream and share one scratch allocation.

    Args:
        manifest: the export directory's manifest.
        precision: "fp16" (default), "int8" or "fp32".
        engine_dir: engine cache folder (default: <export dir>/engines).
        profile: dynamic-dim ranges for engines built here (None: reuse the cached ones').
        allow_build: build missing or stale engines (minutes); False raises EngineCacheError.
        cuda_graph: capture read_decode in a CUDA graph per (objects, H, W) and replay it.
        dla_core: run on this DLA core (Jetson) with GPU fallback.
        device: CUDA device index.
        fp16_recipe / tf32: see plan_recipe.

    Raises:
        MissingDependencyError: tensorrt or cuda-python is not installed.
        NoCudaDeviceError: no usable CUDA device.
        EngineCacheError: stale engines and allow_build=False.
    """

    name = "trt"

    def __init__(
        self,
        manifest: Manifest,
        precision: str = "fp16",
        *,
        engine_dir: str | Path | None = None,
        profile: Profile | None = None,
        allow_build: bool = True,
        rebuild: bool = False,
        cuda_graph: bool = False,
        dla_core: int | None = None,
        device: int = 0,
        fp16_recipe: str = "auto",
        tf32: bool = True,
    ):
        cuda_mem.require_device(device)  # first: TensorRT must not start without a GPU
        self.manifest = manifest
        self.precision = precision
        self.stride = manifest.stride
        self.capacity = manifest.capacity
        self.device = device
        self.dla_core = dla_core
        self.cuda_graph = cuda_graph
        self.nvtx = nvtx_ranges(cuda=True)  # Nsight ranges per graph call (base.nvtx_stage)
        options = BuildOptions(
            engine_dir=engine_dir,
            profile=profile,
            dla_core=dla_core,
            fp16_recipe=fp16_recipe,
            tf32=tf32,
            device=device,
        )
        self.records = ensure_engines(
            manifest, precision, options=options, allow_build=allow_build, rebuild=rebuild
        )
        source = self.records[Graph.READ_DECODER].meta["key"]["recipe"]["source"]
        self.bank_shape = (
            manifest.graph(Graph.READ_DECODER, source, verify=False).input(Tensor.BANK_KEY).shape
        )
        # bank_key (1, T, ...): a shared-key export stores each frame's key once for all objects
        # (one affinity per frame); older exports have (O, T, ...) and still run
        self.object_free_keys = self.bank_shape[0] == 1
        # Engine limits, known before open() (the predictor reads max_objects); open() re-reads
        # them from the deserialized engines.
        profile_used = self.records[Graph.READ_DECODER].meta["key"]["profile"]
        self.max_objects = int(profile_used["max_objects"])
        self.max_size = (int(profile_used["max_height"]), int(profile_used["max_width"]))
        self._opened = False

    # ------------------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if self._opened:
            return
        cuda_mem.set_device(self.device)
        trt = _import_trt()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # safe: the constructor checked the device
        if self.dla_core is not None:
            self._runtime.DLA_core = self.dla_core
        self._stages: dict[str, _Stage] = {}
        self._buffers: dict[str, DeviceBuffer] = {}
        self._graph: cuda_mem.CudaGraph | None = None
        self._graph_key: tuple | None = None
        self._graph_failed = False
        self._stream = Stream()
        self._opened = True
        try:
            self._load_engines()
            self._allocate()
        except BaseException:
            self.close()
            raise

    def _load_engines(self) -> None:
        runtime = self._runtime
        trt = self._trt
        for g in Graph.ALL:
            record = self.records[g]
            data = record.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != record.meta.get("engine_sha256"):
                raise EngineCacheError(f"{record.path} changed since it was checked; rebuild it")
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise TrtError(
                    f"TensorRT could not deserialize {record.path} (see its log "
                    f"above); rebuild it with `mlvos engine --rebuild`"
                )
            # USER_MANAGED: the three contexts run one after another on one stream, so they
            # share one scratch allocation (set in _allocate) instead of one each.
            context = engine.create_execution_context(
                trt.ExecutionContextAllocationStrategy.USER_MANAGED
            )
            if context is None:
                raise TrtError(f"could not create an execution context for {record.path}")
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            io = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
            self._stages[g] = _Stage(g, engine, context, io)

    def _max_shapes(self, stage: _Stage) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Largest shape (profile max) and numpy dtype of every I/O tensor of `stage`."""
        engine = stage.engine
        out = {}
        maxima = {}
        for name, is_input in stage.io.items():
            if is_input:
                shape = tuple(engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    shape = tuple(engine.get_tensor_profile_shape(name, 0)[2])
                maxima[name] = shape
        stage.set_shapes(maxima)
        for name in stage.io:
            shape = maxima.get(name) or stage.out_shapes[name]
            dtype = np.dtype(self._trt.nptype(engine.get_tensor_dtype(name)))
            out[name] = (shape, dtype)
        return out

    def _allocate(self) -> None:
        sizes: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.max_shapes: dict[str, tuple[int, ...]] = {}
        for stage in self._stages.values():
            for name, (shape, dtype) in self._max_shapes(stage).items():
                if name in self.dtypes and self.dtypes[name] != dtype:
                    raise TrtError(
                        f"tensor {name} is {self.dtypes[name]} in one engine and "
                        f"{dtype} in another; rebuild all engines of this precision"
                    )
                self.dtypes[name] = dtype
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if nbytes >= sizes.get(name, -1):
                    sizes[name], self.max_shapes[name] = nbytes, shape
        needed = (
            Tensor.FRAME,
            Tensor.PROBS,
            Tensor.QUERY_KEY,
            Tensor.MEM_KEY,
            Tensor.MEM_VALUE,
            Tensor.BANK_KEY,
            Tensor.BANK_VALUE,
            Tensor.BANK_VALID,
            Tensor.OBJ_PROBS,
            Tensor.LABELS,
        )
        missing = [n for n in needed if n not in self.dtypes]
        if missing:
            raise TrtError(f"the engines have no tensors {missing}; re-export and rebuild")
        for key, bank in ((Tensor.MEM_KEY, Tensor.BANK_KEY), (Tensor.MEM_VALUE, Tensor.BANK_VALUE)):
            if self.dtypes[key] != self.dtypes[bank]:
                raise TrtError(
                    f"{key} is {self.dtypes[key]} but {bank} is {self.dtypes[bank]}; "
                    "the memory encoder and read decoder engines do not match"
                )
        for name, nbytes in sizes.items():
            self._buffers[name] = DeviceBuffer(nbytes, name)
        scratch = max(int(s.engine.device_memory_size_v2) for s in self._stages.values())
        self._buffers["<scratch>"] = DeviceBuffer(scratch, "TensorRT scratch")
        for stage in self._stages.values():
            stage.context.set_device_memory(self._buffers["<scratch>"].ptr, scratch)
            for name in stage.io:
                self._bind(stage, name, self._buffers[name].ptr)
        frame = self.max_shapes[Tensor.FRAME]
        self.max_size = (int(frame[-2]), int(frame[-1]))
        self.max_objects = int(self.max_shapes[Tensor.BANK_VALUE][0])
        self._bank_hw: tuple[int, int] = (0, 0)  # (h, w) of the bank; (0, 0) = none yet
        self._bank_objects = 0

    @staticmethod
    def _bind(stage: _Stage, name: str, ptr: int) -> None:
        if not stage.context.set_tensor_address(name, ptr):
            raise TrtError(f"{stage.name}: TensorRT rejected the address of {name}")

    def close(self) -> None:
        if not self._opened:
            return
        try:
            if self._stream.handle:
                self._stream.synchronize()
        finally:
            if self._graph is not None:
                self._graph.destroy()
                self._graph = None
            # Contexts before engines before the runtime, then the memory they used.
            for stage in self._stages.values():
                del stage.context, stage.engine
            self._stages = {}
            del self._runtime
            for buf in self._buffers.values():
                buf.free()
            self._buffers = {}
            self._stream.destroy()
            self._opened = False

    def synchronize(self) -> None:
        if self._opened:
            self._stream.synchronize()

    def _ready(self) -> None:
        if not self._opened:
            self.open()

    # ------------------------------------------------------------------------------ transfers
    def upload(self, array: np.ndarray) -> DeviceArray:
        """Frames (1, 3, H, W) go to the frame buffer, probabilities (O, H, W) to the probs
        buffer (both preallocated at the profile's maximum)."""
        self._ready()
        array = np.asarray(array)
        name = {4: Tensor.FRAME, 3: Tensor.PROBS}.get(array.ndim)
        if name is None:
            raise InputError(
                f"upload expects a (1, 3, H, W) frame or (O, H, W) probabilities, "
                f"got shape {array.shape}"
            )
        host = np.ascontiguousarray(array, dtype=self.dtypes[name])
        self._check_fits(name, host.shape)
        buf = self._buffers[name]
        cuda_mem.copy_htod(buf.ptr, host, self._stream)
        return DeviceArray(buf.ptr, host.shape, host.dtype)

    def _check_fits(self, name: str, shape: tuple[int, ...]) -> None:
        limit = self.max_shapes[name]
        if len(shape) != len(limit) or any(s > m for s, m in zip(shape, limit)):
            raise InputError(
                f"{name} of shape {tuple(shape)} exceeds the engine's maximum {tuple(limit)} "
                f"(frames up to {self.max_size[0]}x{self.max_size[1]} padded, {self.max_objects} "
                "objects); rebuild with `mlvos engine --resolution HxW` (or --max-objects), "
                "open the runner with a covering Profile (`mlvos run` picks one by itself), or "
                "shrink frames with the predictor's max_side (`mlvos run --max-side`)"
            )

    def download(self, value: DeviceArray) -> np.ndarray:
        self._ready()
        host = np.empty(value.shape, value.dtype)
        cuda_mem.copy_dtoh(host, value.ptr, self._stream)
        return host

    # ------------------------------------------------------------------------------ graphs
    def _outputs(self, stage: _Stage) -> dict[str, DeviceArray]:
        return {
            n: DeviceArray(self._buffers[n].ptr, s, self.dtypes[n])
            for n, s in stage.out_shapes.items()
        }

    def _run(self, stage: _Stage) -> None:
        if not stage.enqueue(self._stream):
            raise TrtError(f"{stage.name}: execute_async_v3 failed (see TensorRT's log above)")

    @nvtx_stage(Graph.QUERY_ENCODER)
    def encode_query(self, frame: DeviceArray) -> dict[str, DeviceArray]:
        self._ready()
        stage = self._stages[Graph.QUERY_ENCODER]
        stage.set_shapes({Tensor.FRAME: frame.shape})
        self._bind(stage, Tensor.FRAME, frame.ptr)
        self._run(stage)
        return self._outputs(stage)

    @nvtx_stage(Graph.MEMORY_ENCODER)
    def encode_memory(
        self, frame: DeviceArray, probs: DeviceArray, query: dict | None = None
    ) -> tuple[DeviceArray, DeviceArray]:
        self._ready()
        stage = self._stages[Graph.MEMORY_ENCODER]
        if probs.dtype != self.dtypes[Tensor.PROBS]:
            probs = self.upload(self.download(probs))  # rare: casts on the host
        shapes = {Tensor.FRAME: frame.shape, Tensor.PROBS: probs.shape}
        if stage.io.get(Tensor.QUERY_KEY):  # shared-key model: memory keys are query keys
            if query is None:
                query = self.encode_query(frame)
            shapes[Tensor.QUERY_KEY] = tuple(query[Tensor.QUERY_KEY].shape)
            self._bind(stage, Tensor.QUERY_KEY, query[Tensor.QUERY_KEY].ptr)
        stage.set_shapes(shapes)
        self._bind(stage, Tensor.FRAME, frame.ptr)
        self._bind(stage, Tensor.PROBS, probs.ptr)
        self._run(stage)
        out = self._outputs(stage)
        return out[Tensor.MEM_KEY], out[Tensor.MEM_VALUE]

    @nvtx_stage(Graph.READ_DECODER)
    def read_decode(
        self, query: dict[str, DeviceArray], objects: int
    ) -> tuple[DeviceArray, DeviceArray]:
        self._ready()
        self._check_objects(objects)
        stage = self._stages[Graph.READ_DECODER]
        hw = tuple(query[Tensor.QUERY_KEY].shape[-2:])
        if self._bank_hw != hw or objects > self._bank_objects:
            raise InputError(
                f"the bank holds {self._bank_objects} objects at {self._bank_hw}, "
                f"but {objects} objects at {hw} were read; call allocate_bank first"
            )
        shapes = {n: tuple(a.shape) for n, a in query.items()}
        shapes[Tensor.BANK_KEY] = (self.key_rows(objects), *self.max_shapes[Tensor.BANK_KEY][1:3],
                                   *hw)
        shapes[Tensor.BANK_VALUE] = (objects, *self.max_shapes[Tensor.BANK_VALUE][1:3], *hw)
        shapes[Tensor.BANK_VALID] = (objects, self.capacity)
        fixed = all(a.ptr == self._buffers[n].ptr for n, a in query.items())
        key = tuple(sorted(shapes.items()))
        if self.cuda_graph and fixed and self._graph is not None and key == self._graph_key:
            self._graph.launch(self._stream)
        else:
            self._drop_graph()
            stage.set_shapes(shapes)
            for n, a in query.items():
                self._bind(stage, n, a.ptr)
            self._run(stage)  # also the warm-up TensorRT needs before a capture
            if self.cuda_graph and fixed and not self._graph_failed:
                self._capture(stage, key)
        out = self._outputs(stage)
        return out[Tensor.OBJ_PROBS], out[Tensor.LABELS]

    def _capture(self, stage: _Stage, key: tuple) -> None:
        graph = cuda_mem.CudaGraph.capture(self._stream, lambda: stage.enqueue(self._stream))
        if graph is None:
            self._graph_failed = True
            log.warning("read_decoder refused CUDA-graph capture; running it without graphs")
            return
        self._graph, self._graph_key = graph, key

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self._graph.destroy()
        self._graph, self._graph_key = None, None

    # ------------------------------------------------------------------------------ bank
    def _check_objects(self, objects: int) -> None:
        if not 1 <= objects <= self.max_objects:
            raise InputError(
                f"{objects} objects requested but these engines support 1..{self.max_objects}; "
                f"rebuild them with `mlvos engine --max-objects {max(objects, 1)}`"
            )

    def _bank_hw_for(self, height: int, width: int) -> tuple[int, int]:
        dims = resolve_shape(self.bank_shape, {"O": 1, "H": height, "W": width})
        return int(dims[-2]), int(dims[-1])

    def key_rows(self, objects: int) -> int:
        """Rows of the key bank that `objects` objects use: 1 when object-free."""
        return 1 if self.object_free_keys else objects

    def _rows(self, name: str, objects: int) -> int:
        return self.key_rows(objects) if name == Tensor.BANK_KEY else objects

    def _object_bytes(self, name: str) -> int:
        """Bytes of one object's (T, C, h, w) block at the current bank size."""
        t, c = self.max_shapes[name][1:3]
        h, w = self._bank_hw
        return t * c * h * w * self.dtypes[name].itemsize

    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        self._ready()
        self._check_fits(Tensor.FRAME, (1, 3, height, width))
        # The predictor may ask for more objects than it uses (it grows by doubling); the device
        # bank is preallocated for the engine's maximum, so only that many can exist.
        n = min(max_objects, self.max_objects)
        hw = self._bank_hw_for(height, width)
        fresh = hw != self._bank_hw
        self._bank_hw = hw
        for name in (Tensor.BANK_KEY, Tensor.BANK_VALUE):
            rows = self._rows(name, n)
            start = 0 if fresh else min(self._rows(name, self._bank_objects), rows)
            if rows > start:
                size = self._object_bytes(name)
                cuda_mem.memset(
                    self._buffers[name].ptr + start * size, 0, (rows - start) * size, self._stream
                )
        self._bank_objects = n

    def write_slot(self, slot: int, key: DeviceArray, value: DeviceArray, objects: int) -> None:
        self._ready()
        self._check_objects(objects)
        if not 0 <= slot < self.capacity:
            raise InputError(f"slot {slot} outside 0..{self.capacity - 1}")
        if objects > self._bank_objects:
            raise InputError(
                f"{objects} objects written but the bank holds "
                f"{self._bank_objects}; call allocate_bank first"
            )
        for src, name in ((key, Tensor.BANK_KEY), (value, Tensor.BANK_VALUE)):
            per_slot = self._object_bytes(name) // self.capacity
            rows = self._rows(name, objects)
            if src.shape[0] < rows or src.nbytes // src.shape[0] != per_slot:
                raise InputError(
                    f"{name} slot data of shape {src.shape} does not fit the bank "
                    f"({objects} objects at {self._bank_hw})"
                )
            dst = self._buffers[name].ptr + slot * per_slot
            # bank[o, slot] = src[o] for o < objects: rows of one slot, pitched by T slots.
            cuda_mem.copy_2d_dtod(
                dst, self.capacity * per_slot, src.ptr, per_slot, per_slot, rows, self._stream
            )

    def set_valid(self, valid: np.ndarray) -> None:
        self._ready()
        valid = np.asarray(valid)
        if valid.ndim != 2 or valid.shape[1] != self.capacity:
            raise InputError(f"valid must be (objects, {self.capacity}), got {valid.shape}")
        host = np.ascontiguousarray(valid[: self.max_objects], dtype=self.dtypes[Tensor.BANK_VALID])
        cuda_mem.copy_htod(self._buffers[Tensor.BANK_VALID].ptr, host, self._stream)

    def move_object(self, src: int, dst: int) -> None:
        self._ready()
        if not (0 <= src < self._bank_objects and 0 <= dst < self._bank_objects):
            raise InputError(
                f"move_object({src}, {dst}) outside the bank's {self._bank_objects} objects"
            )
        if src == dst:
            return
        for name in (Tensor.BANK_VALUE,) if self.object_free_keys else (Tensor.BANK_KEY,
                                                                         Tensor.BANK_VALUE):
            size = self._object_bytes(name)
            base = self._buffers[name].ptr
            cuda_mem.copy_dtod(base + dst * size, base + src * size, size, self._stream)
