"""PyTorch model: ResNet backbones, the multi-level backbone, the STM memory network, variants,
checkpoints and training (under `mlvos.model.train`).

Importing this package does not import torch; the submodules do.
"""
