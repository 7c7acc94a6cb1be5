"""mlvos.export: split ONNX export of STMNet (query_encoder, memory_encoder, read_decoder),
FP16 mixed-precision conversion, and validation against PyTorch.

Public API (imported lazily, so `import mlvos.export` needs neither torch nor onnx):
    export_checkpoint(checkpoint, out, *, capacity, precisions, size, opset, force, validate)
    check_export(export_dir)
    validate_export(export_dir, *, model=None, samples=None)

Modules: wrappers (one nn.Module per graph), io_spec (I/O contracts), onnx_export (torch ->
checked ONNX), fp16 (AutoCast conversion), representative (real/random inputs), validate,
manifest, trt_ops (TensorRT 10.3 op list), errors, options (constants), cli.
"""

from __future__ import annotations

__all__ = ["check_export", "export_checkpoint", "validate_export"]


def __getattr__(name: str):
    if name in ("export_checkpoint", "check_export"):
        from mlvos.export import api

        return getattr(api, name)
    if name == "validate_export":
        from mlvos.export.validate import validate_export

        return validate_export
    raise AttributeError(f"module 'mlvos.export' has no attribute {name!r}")
