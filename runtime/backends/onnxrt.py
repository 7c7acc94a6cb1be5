"""onnxruntime backend: loads the manifest's ONNX graphs; the bank is host memory on the CPU
provider (numpy arrays handed to ORT without copies)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlvos.errors import MlvosError, require
from mlvos.runtime.backends.base import Runner
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph, Tensor


class OrtRunner(Runner):
    """Runner on onnxruntime.

    Args:
        manifest: the export directory's manifest.
        precision: "fp32", "fp16" or "int8" (must be in the manifest).
        providers: onnxruntime execution providers (default: CPUExecutionProvider).
        threads: intra-op threads (default: onnxruntime's choice).
    """

    name = "ort"

    def __init__(
        self,
        manifest: Manifest,
        precision: str = "fp32",
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        ort = require("onnxruntime", "ort", "the onnxruntime backend")
        self.manifest = manifest
        self.precision = precision
        self.stride = manifest.stride
        self.capacity = manifest.capacity
        self.graphs = {g: manifest.graph(g, precision) for g in Graph.ALL}
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise MlvosError(
                f"onnxruntime providers {unknown} are not available (available: "
                f"{ort.get_available_providers()}); install onnxruntime-gpu for CUDA/TensorRT"
            )
        self.sessions = {
            g: ort.InferenceSession(str(info.path), opts, providers=providers)
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
        self.key_dim = int(manifest.data["key_dim"])
        self.value_dim = int(manifest.data["value_dim"])
        self.bank_key = self.bank_value = None
        self.valid = np.zeros((0, self.capacity), self.valid_dtype)

    def upload(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array)

    def download(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def encode_query(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.sessions[Graph.QUERY_ENCODER].run(None, {Tensor.FRAME: frame})
        return dict(zip(self.query_names, outs))

    def encode_memory(self, frame: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key, value = self.sessions[Graph.MEMORY_ENCODER].run(
            [Tensor.MEM_KEY, Tensor.MEM_VALUE],
            {Tensor.FRAME: frame, Tensor.PROBS: probs.astype(self.probs_dtype, copy=False)},
        )
        return key, value

    def read_decode(
        self, query: dict[str, np.ndarray], objects: int
    ) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(query)
        feeds[Tensor.BANK_KEY] = self.bank_key[:objects]
        feeds[Tensor.BANK_VALUE] = self.bank_value[:objects]
        feeds[Tensor.BANK_VALID] = self.valid[:objects]
        probs, labels = self.sessions[Graph.READ_DECODER].run(
            [Tensor.OBJ_PROBS, Tensor.LABELS], feeds
        )
        return probs, labels

    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        h, w = height // 16, width // 16
        key = np.zeros((max_objects, self.capacity, self.key_dim, h, w), self.bank_dtype)
        value = np.zeros((max_objects, self.capacity, self.value_dim, h, w), self.bank_dtype)
        if self.bank_key is not None and self.bank_key.shape[-2:] == (h, w):
            n = min(max_objects, self.bank_key.shape[0])
            key[:n], value[:n] = self.bank_key[:n], self.bank_value[:n]
        self.bank_key, self.bank_value = key, value

    def write_slot(self, slot: int, key: np.ndarray, value: np.ndarray, objects: int) -> None:
        self.bank_key[:objects, slot] = key
        self.bank_value[:objects, slot] = value

    def set_valid(self, valid: np.ndarray) -> None:
        self.valid = np.ascontiguousarray(valid, dtype=self.valid_dtype)

    def move_object(self, src: int, dst: int) -> None:
        self.bank_key[dst] = self.bank_key[src]
        self.bank_value[dst] = self.bank_value[src]
