"""Backends: a runner each (ort, trt, torch; plus the ensemble and recording proxies), and
`open_runner`, which picks and builds one. Optional dependencies are imported lazily."""

from __future__ import annotations

import os
from pathlib import Path

from mlvos.errors import InputError
from mlvos.runtime.manifest import MANIFEST_FILE, Manifest
from mlvos.runtime.spec import DEFAULT_CAPACITY, parse_device

BACKENDS = ("ort", "trt", "torch")
# The precision a backend runs when none is asked for: TensorRT's point is FP16; onnxruntime on
# the CPU and the torch reference run FP32 (`mlvos engine` builds the same default as `mlvos run`).
DEFAULT_PRECISION = {"ort": "fp32", "trt": "fp16", "torch": "fp32"}


def open_runner(
    model: str | os.PathLike,
    *,
    backend: str = "ort",
    precision: str | None = None,
    device: str = "cpu",
    providers: list[str] | None = None,
    threads: int | None = None,
    capacity: int | None = None,
    engine_dir: str | os.PathLike | None = None,
    allow_build: bool = True,
    cuda_graph: bool = False,
    io_binding: bool | None = None,
    profile=None,
):
    """Create a Runner.

    Args:
        model: export directory (with manifest.json); for backend "torch" also a checkpoint file.
        backend: "ort" (onnxruntime), "trt" (TensorRT engines, built/cached on first use) or
            "torch".
        precision: graph precision ("fp32", "fp16", "int8" when exported); default: the
            backend's DEFAULT_PRECISION (trt fp16, ort and torch fp32).
        device: torch device (torch); "cpu" or "cuda[:N]" (ort: picks the CUDA execution
            provider, onnxruntime-gpu); the CUDA device (trt).
        providers: onnxruntime execution providers (overrides the choice from `device`).
        capacity: memory slots for the torch backend when given a bare checkpoint.
        engine_dir / allow_build / cuda_graph: trt only (see runtime.backends.trt.TrtRunner);
            the CUDA device index is taken from `device` ("cuda:1" -> 1, else 0).
        profile: trt only: the engines' runtime.backends.trt.Profile (frame sizes and object
            counts they accept). Default: the cached engines' profile, else the default one
            (up to landscape 1080p and 6 objects); `Profile.covering([(h, w)])` for others.
        io_binding: ort only: keep the bank and features in device OrtValues (OrtBoundRunner).
            Default: on for CUDA/TensorRT providers, off on the CPU (already copy-free).
    """
    path = Path(model)
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    precision = precision or DEFAULT_PRECISION[backend]
    kind, index = parse_device(device)  # one syntax for every backend: cpu, cuda, cuda:N
    device = "cpu" if kind == "cpu" else f"cuda:{index}"
    if backend == "ort":
        from mlvos.runtime.backends.onnxrt import (
            GPU_PROVIDERS,
            OrtBoundRunner,
            OrtRunner,
            device_index,
            providers_for,
        )

        providers = providers or providers_for(device)
        if io_binding is None:
            io_binding = providers[0] in GPU_PROVIDERS
        cls = OrtBoundRunner if io_binding else OrtRunner
        return cls(Manifest.load(path), precision, providers=providers, threads=threads,
                   device_id=device_index(device))
    if backend == "trt":
        from mlvos.runtime.backends.trt import TrtRunner

        return TrtRunner(
            Manifest.load(path),
            precision,
            engine_dir=engine_dir,
            allow_build=allow_build,
            cuda_graph=cuda_graph,
            device=index,
            profile=profile,
        )
    from mlvos.runtime.backends.torch_backend import TorchRunner

    if (path / MANIFEST_FILE).is_file():
        manifest = Manifest.load(path)
        ckpt = manifest.checkpoint_path
        if ckpt is None or not ckpt.is_file():
            raise InputError(f"{path} records no checkpoint file; pass the checkpoint itself")
        return TorchRunner(
            ckpt,
            device=device,
            precision=precision,
            capacity=capacity or manifest.capacity,
            **manifest.read_options,  # the export may override the checkpoint's read priors
        )
    if path.is_file():
        return TorchRunner(
            path, device=device, precision=precision, capacity=capacity or DEFAULT_CAPACITY
        )
    raise InputError(
        f"{path} is neither an export directory ({MANIFEST_FILE}) nor a checkpoint file"
    )
