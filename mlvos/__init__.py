"""mlvos: deployable multi-level-backbone STM video object segmentation.

Subpackages (each imported on demand, so `import mlvos` stays light):
  mlvos.model    PyTorch network, variants, checkpoints, training        (needs torch)
  mlvos.data     synthetic/DAVIS/YouTube-VOS datasets, palette PNG I/O, J&F (numpy, pillow)
  mlvos.export   split ONNX export + validation                          (needs torch, onnx)
  mlvos.runtime  torch-free propagation engine (onnxruntime / TensorRT)  (numpy only)
  mlvos.calib    INT8 Q/DQ calibration
"""

__version__ = "0.1.0"
