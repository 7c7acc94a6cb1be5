"""The machine's dense GEMM rate, measured in the profile's own run with the backend's own
library, so that each stage's achieved GFLOP/s can be read as a fraction of what the hardware
does on the friendliest work there is (issue: distance to the machine's limit in every report).

onnxruntime backends time a one-node MatMul graph in an onnxruntime session with the runner's
threads; the torch backend times torch.matmul on its device. A stage near 1.0 can only get faster
by doing less work; a stage far below it is bound by memory traffic, small shapes or overheads.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

GEMM_SIZE = 2048
GEMM_REPEATS = 5


def _ort_gemm(dtype: str, n: int, threads: int | None, repeats: int) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}[dtype]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", elem, [n, n]),
         helper.make_tensor_value_info("b", elem, [n, n])],
        [helper.make_tensor_value_info("c", elem, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime >= 1.16
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    np_dtype = np.float32 if dtype == "fp32" else np.float16
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np_dtype)
    b = rng.standard_normal((n, n)).astype(np_dtype)
    sess.run(None, {"a": a, "b": b})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"a": a, "b": b})
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def _torch_gemm(runner: Any, n: int, repeats: int) -> float:
    torch = runner.torch
    a = torch.randn(n, n, device=runner.device, dtype=runner.dtype)
    b = torch.randn(n, n, device=runner.device, dtype=runner.dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        runner.synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        runner.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def measure_gemm(runner: Any, backend: str, device: str, threads: int | None, *,
                 n: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> dict[str, Any]:
    """{"fp32_gflops", "fp16_gflops" (None where not measured), "size", "source", "error"}."""
    out: dict[str, Any] = {"size": n, "fp32_gflops": None, "fp16_gflops": None,
                           "source": None, "error": None}
    try:
        if backend == "torch":
            out["source"] = f"torch.matmul {n}^3 {runner.dtype} on {runner.device}"
            key = "fp16_gflops" if "16" in str(runner.dtype) else "fp32_gflops"
            out[key] = _torch_gemm(runner, n, repeats)
        elif backend == "ort" and str(device).startswith("cpu"):
            out["source"] = f"onnxruntime MatMul {n}^3, CPU, {threads or 'default'} threads"
            out["fp32_gflops"] = _ort_gemm("fp32", n, threads, repeats)
        else:
            out["error"] = f"no GEMM probe for {backend} on {device} yet"
    except Exception as e:  # noqa: BLE001 - a probe failure must not lose the profile
        out["error"] = f"{type(e).__name__}: {e}"
        logger.warning(f"GEMM rate not measured: {out['error']}")
    return out


def gemm_fractions(tflops: dict[str, float | None], gemm: dict[str, Any],
                   precision: str) -> dict[str, float | None]:
    """Each stage's achieved rate as a fraction of the measured GEMM rate (fp16 rate for fp16
    graphs where measured, else fp32)."""
    rate = gemm.get("fp16_gflops") if precision == "fp16" else None
    rate = rate or gemm.get("fp32_gflops")
    if not rate:
        return {}
    return {s: (t * 1e3 / rate if t else None) for s, t in (tflops or {}).items()}
