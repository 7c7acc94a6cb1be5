"""mlvos.calib: INT8 calibration of an export directory from real propagation data.

The FP32 graphs are run by the runtime's frame loop over DAVIS-layout videos and the inputs each
graph sees are recorded (cached as npz, keyed by the FP32 graphs' sha256 and the data); NVIDIA
ModelOpt's ONNX PTQ (or onnxruntime's quantize_static) turns each graph into explicit symmetric
INT8 Q/DQ for TensorRT; the parts whose quantization measurably hurts stay FP32; the graphs are
registered in the export's manifest.json as precision "int8", with calibration.json (errors vs
FP32, FP32 nodes and why, optional J&F of FP32 vs INT8 propagation).

Public API (imported lazily, so `import mlvos.calib` needs neither onnx nor ModelOpt):
    calibrate(model, data, out, *, samples, sequences, method, calibrator, keep_fp32, eval_data,
              force, ...)  -> report dict (calibration.json)

Modules: record (recording runner, sample selection), cache (npz cache and its key), quantize
(quantizers, FP32 candidates, error metric), ort_cpu (the "ort-cpu" Q/DQ placement for
onnxruntime's CPU kernels), accuracy (J&F report), api, options, errors, cli.
"""

from __future__ import annotations

__all__ = ["calibrate"]


def __getattr__(name: str):
    if name == "calibrate":
        from mlvos.calib.api import calibrate

        return calibrate
    raise AttributeError(f"module 'mlvos.calib' has no attribute {name!r}")
