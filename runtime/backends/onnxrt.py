"""onnxruntime backend: loads the manifest's ONNX graphs.

Two runners share the loading and checks:
- OrtRunner: numpy in, numpy out. On the CPU provider this is already copy-free (onnxruntime
  wraps contiguous numpy arrays), and the bank is a numpy array written in place.
- OrtBoundRunner: IO binding with OrtValues on the provider's device. The bank, the query
  features and the probabilities stay device OrtValues; per frame only the frame goes up and
  only the label map comes back. Slot writes are pitched device-to-device copies (cuda-python
  on CUDA, memmove on the CPU, where the same code path is tested). The default for the CUDA and
  TensorRT execution providers (onnxruntime-gpu).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from mlvos.errors import MlvosError, require
from mlvos.runtime.backends.base import Runner, nvtx_ranges, nvtx_stage
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import (
    FEATURE_STRIDE,
    Graph,
    Tensor,
    ort_session_config,
    parse_device,
)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def providers_for(device: str) -> list[str]:
    """Execution providers for a device string: "cpu", "cuda" or "cuda:N" (CUDA EP, then CPU
    for the ops it lacks)."""
    if parse_device(device)[0] == "cpu":
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def device_index(device: str) -> int:
    return parse_device(device)[1]


class OrtRunner(Runner):
    """Runner on onnxruntime with numpy arrays (the CPU default).

    Args:
        manifest: the export directory's manifest.
        precision: "fp32", "fp16" or "int8" (must be in the manifest).
        providers: onnxruntime execution providers (default: CPUExecutionProvider).
        threads: intra-op threads (default: onnxruntime's choice).
        device_id: CUDA device of the CUDA/TensorRT providers.
    """

    name = "ort"

    def __init__(
        self,
        manifest: Manifest,
        precision: str = "fp32",
        providers: list[str] | None = None,
        threads: int | None = None,
        device_id: int = 0,
        flush_denormals: bool = True,
    ):
        ort = require("onnxruntime", "ort", "the onnxruntime backend")
        self.ort = ort
        self.manifest = manifest
        self.precision = precision
        self.stride = manifest.stride
        self.capacity = manifest.capacity
        self.feature_stride = int(manifest.data.get("feature_stride", FEATURE_STRIDE))
        self.graphs = {g: manifest.graph(g, precision) for g in Graph.ALL}
        self.device_id = device_id
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        for key, value in ort_session_config(precision,
                                             flush_denormals=flush_denormals).items():
            opts.add_session_config_entry(key, value)
        providers = providers or ["CPUExecutionProvider"]
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            gpu = any(p in GPU_PROVIDERS for p in unknown)
            raise MlvosError(
                f"onnxruntime providers {unknown} are not available (available: "
                f"{ort.get_available_providers()})"
                + ("; pip install 'mlvos[ort-gpu]' (onnxruntime-gpu) on a CUDA machine" if gpu
                   else "")
            )
        self.providers = providers
        self.nvtx = nvtx_ranges(cuda=providers[0] in GPU_PROVIDERS)  # Nsight (base.nvtx_stage)
        provider_options = [
            {"device_id": str(device_id)} if p in GPU_PROVIDERS else {} for p in providers
        ]
        self.sessions = {
            g: ort.InferenceSession(
                str(info.path), opts, providers=providers, provider_options=provider_options
            )
            for g, info in self.graphs.items()
        }
        for g, sess in self.sessions.items():
            names = {i.name for i in sess.get_inputs()}
            expected = {t.name for t in self.graphs[g].inputs}
            if names != expected:
                raise MlvosError(
                    f"{self.graphs[g].path} inputs {sorted(names)} differ from the manifest's "
                    f"{sorted(expected)}; re-export"
                )
        rd = self.graphs[Graph.READ_DECODER]
        self.bank_dtype = np.dtype(rd.input(Tensor.BANK_KEY).dtype)
        self.valid_dtype = np.dtype(rd.input(Tensor.BANK_VALID).dtype)
        self.probs_dtype = np.dtype(self.graphs[Graph.MEMORY_ENCODER].input(Tensor.PROBS).dtype)
        self.query_names = [t.name for t in self.graphs[Graph.QUERY_ENCODER].outputs]
        # shared-key models: memory keys are query keys, fed to the memory_encoder
        self.memory_takes_key = any(
            t.name == Tensor.QUERY_KEY for t in self.graphs[Graph.MEMORY_ENCODER].inputs
        )
        self.key_dim = int(manifest.data["key_dim"])
        self.value_dim = int(manifest.data["value_dim"])
        # bank_key (1, T, ...): a shared-key export stores each frame's key once for all
        # objects; exports before the object-free bank have (O, T, ...) and still run
        self.object_free_keys = rd.input(Tensor.BANK_KEY).shape[0] == 1
        self.bank_key = self.bank_value = None
        self.valid = np.zeros((0, self.capacity), self.valid_dtype)

    def bank_shape(self, max_objects: int, height: int, width: int, dim: int) -> tuple:
        fs = self.feature_stride
        return (max_objects, self.capacity, dim, height // fs, width // fs)

    def key_rows(self, objects: int) -> int:
        """Rows of the key bank that `objects` objects use: 1 when object-free."""
        return 1 if self.object_free_keys else objects

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array)

    def download(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    @nvtx_stage(Graph.QUERY_ENCODER)
    def encode_query(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.sessions[Graph.QUERY_ENCODER].run(None, {Tensor.FRAME: frame})
        return dict(zip(self.query_names, outs))

    def _memory_feeds(self, frame, probs, query) -> dict[str, Any]:
        feeds = {Tensor.FRAME: frame, Tensor.PROBS: probs}
        if self.memory_takes_key:
            if query is None:
                query = self.encode_query(frame)
            feeds[Tensor.QUERY_KEY] = query[Tensor.QUERY_KEY]
        return feeds

    @nvtx_stage(Graph.MEMORY_ENCODER)
    def encode_memory(
        self, frame: np.ndarray, probs: np.ndarray, query: dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        probs = probs.astype(self.probs_dtype, copy=False)
        key, value = self.sessions[Graph.MEMORY_ENCODER].run(
            [Tensor.MEM_KEY, Tensor.MEM_VALUE], self._memory_feeds(frame, probs, query)
        )
        return key, value

    @nvtx_stage(Graph.READ_DECODER)
    def read_decode(
        self, query: dict[str, np.ndarray], objects: int
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(query)
        feeds[Tensor.BANK_KEY] = self.bank_key[: self.key_rows(objects)]
        feeds[Tensor.BANK_VALUE] = self.bank_value[:objects]
        feeds[Tensor.BANK_VALID] = self.valid[:objects]
        probs, labels = self.sessions[Graph.READ_DECODER].run(
            [Tensor.OBJ_PROBS, Tensor.LABELS], feeds
        )
        return probs, labels

    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        key = np.zeros(self.bank_shape(self.key_rows(max_objects), height, width, self.key_dim),
                       self.bank_dtype)
        value = np.zeros(
            self.bank_shape(max_objects, height, width, self.value_dim), self.bank_dtype
        )
        if self.bank_key is not None and self.bank_key.shape[-2:] == key.shape[-2:]:
            n = min(max_objects, self.bank_value.shape[0])
            value[:n] = self.bank_value[:n]
            n = min(key.shape[0], self.bank_key.shape[0])
            key[:n] = self.bank_key[:n]
        self.bank_key, self.bank_value = key, value

    def write_slot(self, slot: int, key: np.ndarray, value: np.ndarray, objects: int) -> None:
        self.bank_key[: self.key_rows(objects), slot] = key
        self.bank_value[:objects, slot] = value

    def set_valid(self, valid: np.ndarray) -> None:
        self.valid = np.ascontiguousarray(valid, dtype=self.valid_dtype)

    def move_object(self, src: int, dst: int) -> None:
        if not self.object_free_keys:
            self.bank_key[dst] = self.bank_key[src]
        self.bank_value[dst] = self.bank_value[src]

    # graph inputs, for recording (runtime.backends.recording.RecordingRunner)
    def query_feed(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        return {Tensor.FRAME: np.array(frame)}

    def memory_feed(self, frame, probs, query=None) -> dict[str, np.ndarray]:
        feed = {k: np.array(v) for k, v in self._memory_feeds(frame, probs, query).items()}
        feed[Tensor.PROBS] = feed[Tensor.PROBS].astype(self.probs_dtype, copy=False)
        return feed

    def read_feed(self, query: dict[str, np.ndarray], objects: int) -> dict[str, np.ndarray]:
        feed = {k: np.array(v) for k, v in query.items()}
        feed[Tensor.BANK_KEY] = np.array(self.bank_key[: self.key_rows(objects)])
        feed[Tensor.BANK_VALUE] = np.array(self.bank_value[:objects])
        feed[Tensor.BANK_VALID] = np.array(self.valid[:objects])
        return feed


class _HostCopies:
    """Byte copies between CPU OrtValues (memmove): the CPU twin of _CudaCopies."""

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    def copy_2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, rows: int):
        for r in range(rows):
            ctypes.memmove(dst + r * dpitch, src + r * spitch, width)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class _CudaCopies:
    """Device-to-device copies through cuda-python on one stream of our own.

    onnxruntime's CUDA provider synchronizes its stream at the end of each run, so the copies
    see finished outputs; finish() waits for them before the next run reads the bank.
    """

    def __init__(self, device_id: int) -> None:
        from mlvos.runtime.backends import cuda_mem

        cuda_mem.require_device(device_id)
        cuda_mem.set_device(device_id)
        self.cm = cuda_mem
        self.stream = cuda_mem.Stream()

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        self.cm.copy_dtod(dst, src, nbytes, self.stream)

    def copy_2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, rows: int):
        self.cm.copy_2d_dtod(dst, dpitch, src, spitch, width, rows, self.stream)

    def finish(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream.destroy()


class OrtBoundRunner(OrtRunner):
    """OrtRunner with IO binding: everything but the frame and the label map stays in OrtValues
    on the provider's device ("cuda" for the CUDA/TensorRT providers, else "cpu").

    The bank is one OrtValue per tensor at (max_objects, capacity, C, h, w); a read binds its
    first `objects` objects by address (a prefix along the leading axis is contiguous), so no
    per-frame copy or allocation of the bank happens.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.device = "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"
        self.copies = _CudaCopies(self.device_id) if self.device == "cuda" else _HostCopies()
        self.valid_value = None
        self.bank_objects = 0

    def close(self) -> None:
        self.copies.close()

    def _ortvalue(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.device, self.device_id
        )

    def _bind_prefix(self, binding, name: str, value, objects: int) -> None:
        """Bind the first `objects` entries of `value`'s leading axis (contiguous) by address."""
        binding.bind_input(name, self.device, self.device_id, self._np_type(value),
                           [objects, *value.shape()[1:]], value.data_ptr())

    @staticmethod
    def _np_type(value) -> np.dtype:
        names = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(uint8)": np.uint8}
        return np.dtype(names[value.data_type()])

    def _run(self, graph: str, inputs: dict[str, Any], outputs: list[str],
             prefix: dict[str, tuple[Any, int]] | None = None) -> list:
        session = self.sessions[graph]
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, (value, objects) in (prefix or {}).items():
            self._bind_prefix(binding, name, value, objects)
        for name in outputs:
            binding.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def upload(self, array: np.ndarray):
        return self._ortvalue(array)

    def download(self, value: Any) -> np.ndarray:
        return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

    @nvtx_stage(Graph.QUERY_ENCODER)
    def encode_query(self, frame) -> dict[str, Any]:
        outs = self._run(Graph.QUERY_ENCODER, {Tensor.FRAME: frame}, self.query_names)
        return dict(zip(self.query_names, outs))

    @nvtx_stage(Graph.MEMORY_ENCODER)
    def encode_memory(self, frame, probs, query: dict | None = None) -> tuple[Any, Any]:
        if not hasattr(probs, "data_ptr"):  # host probabilities (an annotated frame)
            probs = self._ortvalue(np.asarray(probs, self.probs_dtype))
        elif self._np_type(probs) != self.probs_dtype:
            raise MlvosError(
                f"read_decoder's obj_probs is {probs.data_type()} but memory_encoder expects "
                f"{self.probs_dtype}; re-export (the manifest's I/O dtypes disagree)"
            )
        key, value = self._run(
            Graph.MEMORY_ENCODER, self._memory_feeds(frame, probs, query),
            [Tensor.MEM_KEY, Tensor.MEM_VALUE],
        )
        return key, value

    @nvtx_stage(Graph.READ_DECODER)
    def read_decode(self, query: dict[str, Any], objects: int) -> tuple[Any, Any]:
        probs, labels = self._run(
            Graph.READ_DECODER, query, [Tensor.OBJ_PROBS, Tensor.LABELS],
            prefix={Tensor.BANK_KEY: (self.bank_key, self.key_rows(objects)),
                    Tensor.BANK_VALUE: (self.bank_value, objects),
                    Tensor.BANK_VALID: (self.valid_value, objects)},
        )
        return probs, labels

    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        old = (self.bank_key, self.bank_value)
        key = self._ortvalue(
            np.zeros(self.bank_shape(self.key_rows(max_objects), height, width, self.key_dim),
                     self.bank_dtype))
        value = self._ortvalue(
            np.zeros(self.bank_shape(max_objects, height, width, self.value_dim),
                     self.bank_dtype))
        if old[0] is not None and tuple(old[0].shape()[2:]) == tuple(key.shape()[2:]):
            for src, dst in zip(old, (key, value)):
                n = min(dst.shape()[0], src.shape()[0])
                per_object = self._bytes(src) // src.shape()[0]
                self.copies.copy(dst.data_ptr(), src.data_ptr(), n * per_object)
            self.copies.finish()
        self.bank_key, self.bank_value = key, value
        self.bank_objects = max_objects
        self.valid_value = self._ortvalue(np.zeros((max_objects, self.capacity),
                                                   self.valid_dtype))

    def _bytes(self, value) -> int:
        return int(np.prod(value.shape(), dtype=np.int64)) * self._np_type(value).itemsize

    def write_slot(self, slot: int, key, value, objects: int) -> None:
        for bank, new, rows in ((self.bank_key, key, self.key_rows(objects)),
                                (self.bank_value, value, objects)):
            slot_bytes = self._bytes(new) // rows  # one object's (C, h, w)
            expected = self._bytes(bank) // (bank.shape()[0] * self.capacity)
            if slot_bytes != expected or self._np_type(new) != self._np_type(bank):
                raise MlvosError(
                    f"memory_encoder output {new.shape()} {new.data_type()} does not fit the "
                    f"bank {bank.shape()} {bank.data_type()}; re-export"
                )
            # bank[o, slot] for o < objects: rows of slot_bytes, pitch capacity * slot_bytes.
            self.copies.copy_2d(
                bank.data_ptr() + slot * slot_bytes, self.capacity * slot_bytes,
                new.data_ptr(), slot_bytes, slot_bytes, rows,
            )
        self.copies.finish()

    def set_valid(self, valid: np.ndarray) -> None:
        valid = np.ascontiguousarray(valid, dtype=self.valid_dtype)
        if self.valid_value is None or tuple(self.valid_value.shape()) != valid.shape:
            self.valid_value = self._ortvalue(valid)
        else:
            self.valid_value.update_inplace(valid)

    def query_feed(self, frame) -> dict[str, np.ndarray]:
        raise MlvosError("graph inputs are recorded on the plain onnxruntime runner (CPU, no IO "
                         "binding): open the export with device='cpu'")

    memory_feed = read_feed = query_feed

    def move_object(self, src: int, dst: int) -> None:
        for bank in (self.bank_value,) if self.object_free_keys else (self.bank_key,
                                                                       self.bank_value):
            per_object = self._bytes(bank) // self.bank_objects
            self.copies.copy(bank.data_ptr() + dst * per_object,
                             bank.data_ptr() + src * per_object, per_object)
        self.copies.finish()
