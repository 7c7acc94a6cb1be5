"""PyTorch backend: the same stage split run from a checkpoint (FP32 on CPU as the reference;
FP16 + channels_last on CUDA where TensorRT is absent). torch is imported lazily."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mlvos.errors import InputError, require
from mlvos.runtime.backends.base import NvtxRanges, nvtx_ranges, nvtx_stage
from mlvos.runtime.spec import FEATURE_STRIDE, Graph, Precision
from mlvos.runtime.spec import Tensor as T


class TorchRunner:
    """Runner on PyTorch (same contract as runtime.backends.base.Runner).

    Args:
        checkpoint: mlvos checkpoint file, or an STMNet already in memory (put it in eval mode;
            it is moved to `device` and cast to `precision` in place, as nn.Module.to does: pass
            a copy to keep the original). The PyTorch reference of export runs this way.
        device: "cpu" or "cuda[:N]".
        precision: "fp32", "fp16" (needs CUDA) or "bf16" (CPU or CUDA).
        capacity: memory slots.
        channels_last: use NHWC memory format for convolutions (faster on tensor cores).
        read_topk / read_kernel: memory-read priors to run with instead of the checkpoint's
            (an export's manifest records them: Manifest.read_options); None keeps them.
    """

    name = "torch"

    def __init__(
        self,
        checkpoint: str | os.PathLike | Any,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        capacity: int,
        channels_last: bool | None = None,
        read_topk: int | None = None,
        read_kernel: float | None = None,
    ):
        torch = require("torch", "train", "the torch backend")
        from mlvos.model.checkpoint import load_model, with_read_options

        if precision not in Precision.TORCH:
            raise InputError(
                f"the torch backend runs {', '.join(Precision.TORCH)}, got {precision!r}"
            )
        if precision == "fp16" and not device.startswith("cuda"):
            raise InputError("fp16 on the torch backend needs --device cuda (CPU fp16 is emulated)")
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cpu":
            # as the ort backend: denormals (real footage) are ~100x slower on x86 CPUs
            torch.set_flush_denormal(True)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            precision
        ]
        if isinstance(checkpoint, torch.nn.Module):
            model = checkpoint.to(self.device)
        else:
            model, _ = load_model(checkpoint, map_location=device)
        model = with_read_options(model, topk=read_topk, kernel=read_kernel)
        self.model = model.to(self.dtype)
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.stride = model.stride
        self.capacity = capacity
        # the memory schedule the model was validated with (VideoPredictor's default)
        self.schedule = (model.config.mem_every, model.config.prev_every)
        self.key_dim, self.value_dim = model.config.key_dim, model.config.value_dim
        # a shared-key model's bank stores each frame's key once (object-free key bank)
        self.object_free_keys = bool(model.config.shared_key)
        self.bank_key = self.bank_value = None
        self.valid = torch.zeros(0, capacity, device=self.device)
        # Nsight ranges per graph call (base.nvtx_stage): the nvtx package, else torch's own
        self.nvtx = nvtx_ranges(
            cuda=self.device.type == "cuda",
            fallback=lambda: NvtxRanges(torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop),
        )

    def __enter__(self):
        self.torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc) -> None:
        self.torch.set_grad_enabled(True)

    def open(self) -> None:
        self.torch.set_grad_enabled(False)

    def close(self) -> None:
        pass

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def upload(self, array: np.ndarray) -> Any:
        t = self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)
        return t.to(self.dtype) if t.is_floating_point() else t

    def download(self, value: Any) -> np.ndarray:
        return (
            value.detach().float().cpu().numpy()
            if value.is_floating_point()
            else value.cpu().numpy()
        )

    def _nhwc(self, x):
        return x.contiguous(memory_format=self.torch.channels_last) if self.channels_last else x

    @nvtx_stage(Graph.QUERY_ENCODER)
    def encode_query(self, frame):
        return self.model.encode_query(self._nhwc(frame))

    @nvtx_stage(Graph.MEMORY_ENCODER)
    def encode_memory(self, frame, probs, query=None):
        key = None if query is None else query.key
        return self.model.encode_memory(self._nhwc(frame), probs.to(self.dtype), key)

    @nvtx_stage(Graph.READ_DECODER)
    def read_decode(self, query, objects: int):
        logits = self.model.read_decode(
            query, self.bank_key[: self.key_rows(objects)], self.bank_value[:objects],
            self.valid[:objects]
        )
        return self.model.aggregate_outputs(logits)

    def allocate_bank(self, max_objects: int, height: int, width: int) -> None:
        torch = self.torch
        h, w = height // FEATURE_STRIDE, width // FEATURE_STRIDE
        kw = dict(device=self.device, dtype=self.dtype)
        key = torch.zeros(self.key_rows(max_objects), self.capacity, self.key_dim, h, w, **kw)
        value = torch.zeros(max_objects, self.capacity, self.value_dim, h, w, **kw)
        if self.bank_key is not None and tuple(self.bank_key.shape[-2:]) == (h, w):
            n = min(max_objects, self.bank_value.shape[0])
            value[:n] = self.bank_value[:n]
            n = min(key.shape[0], self.bank_key.shape[0])
            key[:n] = self.bank_key[:n]
        self.bank_key, self.bank_value = key, value

    def key_rows(self, objects: int) -> int:
        """Rows of the key bank that `objects` objects use: 1 when object-free."""
        return 1 if self.object_free_keys else objects

    def write_slot(self, slot: int, key, value, objects: int) -> None:
        self.bank_key[: self.key_rows(objects), slot] = key
        self.bank_value[:objects, slot] = value

    def set_valid(self, valid: np.ndarray) -> None:
        self.valid = self.torch.from_numpy(np.ascontiguousarray(valid, np.float32)).to(self.device)

    def move_object(self, src: int, dst: int) -> None:
        if not self.object_free_keys:
            self.bank_key[dst] = self.bank_key[src]
        self.bank_value[dst] = self.bank_value[src]

    # graph inputs, for recording (runtime.backends.recording.RecordingRunner)
    def _host(self, x) -> np.ndarray:
        # a copy: on the CPU .numpy() shares memory with the bank, which later frames overwrite
        x = x.detach().float() if x.is_floating_point() else x.detach()
        return np.array(x.cpu().numpy(), copy=True)

    def query_feed(self, frame) -> dict[str, np.ndarray]:
        return {T.FRAME: self._host(frame)}

    def memory_feed(self, frame, probs, query=None) -> dict[str, np.ndarray]:
        feed = {T.FRAME: self._host(frame), T.PROBS: self._host(probs)}
        if self.model.config.shared_key:
            key = (query if query is not None else self.encode_query(frame)).key
            feed[T.QUERY_KEY] = self._host(key)
        return feed

    def read_feed(self, query, objects: int) -> dict[str, np.ndarray]:
        return {
            T.QUERY_KEY: self._host(query.key),
            T.QUERY_VALUE: self._host(query.value),
            T.SKIP8: self._host(query.skip8),
            T.SKIP4: self._host(query.skip4),
            T.BANK_KEY: self._host(self.bank_key[: self.key_rows(objects)]),
            T.BANK_VALUE: self._host(self.bank_value[:objects]),
            T.BANK_VALID: self._host(self.valid[:objects]),
        }
