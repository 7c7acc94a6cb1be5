"""What `mlvos check` compares: the backend (TensorRT engines where TensorRT and a GPU are
usable, else onnxruntime), the candidate runners of each precision (Polygraphy runners over the
ONNX graphs or over mlvos' engines) and the report on the memory read's attention fusion."""

from __future__ import annotations

import importlib.util
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlvos.errors import InputError, require
from mlvos.profiling.feeds import Feed
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "ort", "trt")


def resolve_backend(backend: str, device: int = 0) -> tuple[str, str]:
    """("trt" | "ort", why) for a requested backend: "auto" is "trt" when tensorrt is installed and
    a CUDA device works, else "ort". tensorrt is looked up, never imported, here.

    Raises:
        InputError: an unknown backend.
        MissingDependencyError / NoCudaDeviceError: "trt" requested without TensorRT or a GPU.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ort":
        return "ort", "requested"
    installed = importlib.util.find_spec("tensorrt") is not None
    ok, why = False, "tensorrt is not installed"
    if installed:
        from mlvos.runtime.backends.cuda_mem import cuda_device_status

        ok, why = cuda_device_status(device)
    if ok:
        return "trt", f"TensorRT and {why}"
    if backend == "trt":
        from mlvos.errors import MissingDependencyError
        from mlvos.runtime.errors import NoCudaDeviceError

        if not installed:
            raise MissingDependencyError(
                "--backend trt needs TensorRT: pip install 'mlvos[trt]' on a machine with an "
                "NVIDIA GPU, or use --backend ort to compare the onnxruntime precisions"
            )
        raise NoCudaDeviceError(
            f"--backend trt needs a usable CUDA device: {why}. Use --backend ort to compare the "
            "onnxruntime precisions"
        )
    return "ort", why


@dataclass(frozen=True)
class Candidate:
    """One graph of one precision as the check runs it."""

    precision: str
    graph: str
    backend: str  # "ort" | "trt"
    path: Path  # ONNX graph (ort) or engine file (trt)
    io_precision: str  # whose manifest input dtypes the runner takes
    source_onnx: Path  # the ONNX graph it was made from

    def runner(self):
        if self.backend == "trt":
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner

            return TrtRunner(
                EngineFromBytes(BytesFromPath(str(self.path))), name=f"trt:{self.precision}"
            )
        return _ort_runner(self.path, f"ort:{self.precision}")


def _ort_runner(path: Path, name: str):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name=name)


def _ort_candidates(manifest: Manifest, precision: str) -> dict[str, Candidate]:
    paths = {g: manifest.graph(g, precision, verify=False).path for g in Graph.ALL}
    return {g: Candidate(precision, g, "ort", path, precision, path) for g, path in paths.items()}


def _trt_candidates(
    manifest: Manifest, precision: str, engine_dir: str | Path | None, device: int
) -> dict[str, Candidate]:
    """The engines of `precision` (built, or reused from the cache: ensure_engines); each takes
    the input dtypes of the ONNX graph its recipe parsed (fp16 on TensorRT 10.3: the fp32 graph
    with the FP16 builder flag, fp32 I/O)."""
    from mlvos.runtime.backends.trt import ensure_engines

    out = {}
    for g, rec in ensure_engines(manifest, precision, engine_dir=engine_dir, device=device).items():
        source = ((rec.meta.get("key") or {}).get("recipe") or {}).get("source") or precision
        onnx_path = manifest.graph(g, source, verify=False).path
        out[g] = Candidate(precision, g, "trt", Path(rec.path), source, onnx_path)
    return out


def _check_profile(candidate: Candidate, feeds: list[Feed]) -> None:
    """Raise InputError when a feed falls outside the engine's optimization profile."""
    from mlvos.runtime.backends.trt import metadata_path, read_metadata

    shapes = ((read_metadata(metadata_path(candidate.path)) or {}).get("key") or {}).get("shapes")
    for name, (lo, _opt, hi) in (shapes or {}).items():
        for feed in feeds:
            got = feed[name].shape
            if not all(a <= d <= b for a, d, b in zip(lo, got, hi)):
                raise InputError(
                    f"{candidate.graph}: input {name} of shape {got} is outside the engine's "
                    f"profile {lo}..{hi} ({candidate.path}); record smaller frames / fewer "
                    "objects, or rebuild the engines with a larger profile (`mlvos engine --help`)"
                )


def attention_report(
    manifest: Manifest, candidates: dict[str, Candidate], backend: str
) -> dict[str, dict[str, Any]]:
    """Per precision: the manifest's attention_fusable claim, the ONNX pattern, and on TensorRT
    where the engine put the read's MatMul, Softmax and MatMul (profiling.fusion)."""
    from mlvos.profiling.fusion import attention_chain, classify_attention, engine_layer_names

    out: dict[str, dict[str, Any]] = {}
    for precision, cand in candidates.items():
        entry = manifest.data["graphs"][Graph.READ_DECODER].get(precision, {})
        chain = attention_chain(cand.source_onnx)
        report: dict[str, Any] = {
            "claimed_fusable": entry.get("attention_fusable"),
            "note": entry.get("attention_note"),
            "onnx_pattern": chain[0] if chain else None,
        }
        if chain is None:
            report.update(
                status="no_pattern",
                detail=f"{cand.source_onnx.name} has no MatMul-Softmax-MatMul chain to fuse",
            )
        elif backend != "trt":
            report.update(
                status="unverified",
                detail="no TensorRT engine was inspected (onnxruntime backend): verify with "
                "`mlvos check --backend trt` on a GPU with TensorRT",
            )
        else:
            trt = require("tensorrt", "trt", "inspecting TensorRT engines")
            layers = engine_layer_names(trt, cand.path)
            report.update(classify_attention(layers, *chain))
            report["engine_layers"] = len(layers)
        report["inspect_command"] = (
            shlex.join(["polygraphy", "inspect", "model", str(cand.path), "--model-type", "engine",
                        "--show", "layers"])
            if backend == "trt"
            else None
        )
        out[precision] = report
    return out
