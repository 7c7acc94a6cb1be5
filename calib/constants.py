"""Calibration constants that the CLI needs at import time (no onnx, torch or ModelOpt)."""

from __future__ import annotations

# Quantizers. modelopt: NVIDIA ModelOpt ONNX PTQ (TensorRT's Q/DQ placement rules); ort:
# onnxruntime quantize_static in QDQ format, Conv/MatMul only, symmetric; ort-cpu: the same
# quantizer with Q/DQ placed so that onnxruntime's CPU provider fuses them into INT8 kernels
# (see ort_cpu.py).
METHODS: tuple[str, ...] = ("modelopt", "ort", "ort-cpu")
DEFAULT_METHOD = "modelopt"
# Activation range calibrators: max (|x| max over the samples) or entropy (KL divergence, clips
# outliers; ModelOpt's int8 default). max is the default here, measured on a trained tiny model
# (32 samples, 10 synthetic validation videos): entropy gave the encoders a lower output RMS
# error but worse propagation, because the clipped large activations decide the labels:
# INT8-vs-FP32 per-frame IoU 0.78 (max) vs 0.64 (entropy), better on 9 of 10 videos.
CALIBRATORS: tuple[str, ...] = ("max", "entropy")
DEFAULT_CALIBRATOR = "max"

# Parts of the network that may stay in FP32 (quantize.candidate_nodes finds their nodes).
CANDIDATES: tuple[str, ...] = ("first_conv", "attention", "aggregation", "logits_conv")
KEEP_AUTO = "auto"  # measure every candidate and keep those that matter (the default)
KEEP_NONE = "none"  # quantize everything the quantizer places Q/DQ on
KEEP_CHOICES: tuple[str, ...] = (KEEP_AUTO, KEEP_NONE, *CANDIDATES)
# "auto" keeps a candidate in FP32 when doing so removes at least this share of the graph's
# output error (relative RMS error vs FP32 on the calibration data).
KEEP_MIN_GAIN = 0.2

# Calibration samples: one sample = the inputs of each graph at one propagated frame.
DEFAULT_SAMPLES = 32
MIN_SAMPLES = 4
SELECTIONS: tuple[str, ...] = ("even", "random")
DEFAULT_SELECTION = "even"

PRECISION = "int8"  # spec.Precision.INT8, spelled out: spec imports numpy (tests compare them)
CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "mlvos-calibration"
CALIBRATION_VERSION = 1
CACHE_DIR = "cache"  # inside --out: the recorded feeds (npz) and their key
