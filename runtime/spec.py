"""The single source of truth for tensor names, layouts and preprocessing constants.

Read by the model (normalization, padding), export (graph I/O names), runtime and calib. numpy only.

Conventions
- Frames are RGB uint8 (H, W, 3) on the host; graphs take NCHW uint8 and normalize inside.
- Frames are padded to a multiple of the network's total stride, centered, with zero-valued pixels
  (black before normalization, as STM does), and outputs are cropped back with the same amounts.
- Object probabilities are float32 in [0, 1], objects on the batch axis.
- The memory bank is (objects, capacity, channels, h, w) so that the first O objects of a bank
  preallocated for O_max objects are a contiguous prefix; `bank_valid` (objects, capacity) is 1.0
  for filled slots and 0.0 for empty ones. Empty slots must hold finite values (zeros).
- A shared-key model (STCN's keys: the memorized frame's query key) has an object-free key bank,
  (1, capacity, Ck, h, w): the read computes one affinity per frame for all objects. The
  manifest's bank_key shape says which (a leading 1, or "O" for per-object keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mlvos.errors import InputError

# ImageNet statistics in the 0..255 pixel scale, applied inside the query/memory encoders.
PIXEL_MEAN: tuple[float, float, float] = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
PIXEL_STD: tuple[float, float, float] = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)

# Memory read, keys and values live at stride 16 whatever the backbone's total stride.
FEATURE_STRIDE: int = 16

# Soft aggregation clamps probabilities to [AGG_EPS, 1 - AGG_EPS] before the logit (STM).
AGG_EPS: float = 1e-7
# Additive softmax bias for empty memory slots: exp(-1e4) is exactly 0 in float16 and float32.
INVALID_SLOT_BIAS: float = -1e4
# Smallest frame side accepted (the stride-32 feature map must be at least 1x1 with margins).
MIN_SIDE: int = 32
# Default number of memory slots (annotated frame + every N-th frames + the previous frame).
DEFAULT_CAPACITY: int = 6
# Range of the predictor's internal scale (frame size x scale is what the network sees).
MIN_SCALE: float = 0.25
MAX_SCALE: float = 4.0
# Default period of permanent memory frames (STM's mem_every).
DEFAULT_MEM_EVERY: int = 5
# Label maps are uint8, 0 = background, so at most 255 objects.
MAX_OBJECT_ID: int = 255
# onnxruntime session options of every runtime session.
ORT_CPU_SESSION_CONFIG: dict[str, str] = {
    # A frame runs three sessions one after the other, each with its own intra-op pool. With
    # spinning on, a finished session's threads keep polling for work while the next session
    # runs, so on a small CPU they take cores from it: measured on this 2-core CPU (tiny, 480p,
    # 1 object, ORT fp32, 2 threads) 143.5-144.8 ms/frame spinning, 95.3-97.0 without; the
    # same masks.
    "session.intra_op.allow_spinning": "0",
}
# ... and of int8 graphs (calib's "ort-cpu" graphs give each consumer of a quantized tensor its
# own Q->DQ pair, which the x86 CPU provider needs to fuse uint8 kernels; common-subexpression
# elimination would merge them back). Harmless for other Q/DQ graphs.
ORT_INT8_SESSION_CONFIG: dict[str, str] = {
    "optimization.disable_specified_optimizers": "CommonSubexpressionElimination",
}


def ort_session_config(precision: str, *, flush_denormals: bool = True) -> dict[str, str]:
    """The config entries of the runtime's onnxruntime sessions for graphs of `precision`
    (OrtRunner; the node profiler opens its sessions the same way)."""
    # Real footage drives the memory read's softmax tails into denormal floats, which x86
    # computes ~100x slower (a 2.7x slower frame on vtest.avi); flushing them changes no label
    # (tests/runtime: identical masks either way).
    config = {"session.set_denormal_as_zero": "1"} if flush_denormals else {}
    config.update(ORT_CPU_SESSION_CONFIG)
    if precision == Precision.INT8:
        config.update(ORT_INT8_SESSION_CONFIG)
    return config


# Named frame sizes (height, width): profiles, sweeps and engine builds take these or "HxW".
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "480p": (480, 854),
    "720p": (720, 1280),
    "1080p": (1080, 1920),
    "4k": (2160, 3840),
}


def parse_resolution(text: str) -> tuple[str, int, int]:
    """ "480p" | "720p" | "1080p" | "4k" | "HxW" -> (label, height, width)."""
    text = text.strip()
    if text.lower() in RESOLUTIONS:
        return (text.lower(), *RESOLUTIONS[text.lower()])
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(
            f"resolution {text!r} is not one of {', '.join(RESOLUTIONS)} or HEIGHTxWIDTH"
        ) from None
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"resolution {text!r}: both sides must be >= {MIN_SIDE}")
    return (f"{h}x{w}", h, w)


def parse_device(text: str) -> tuple[str, int]:
    """The one device syntax of every backend and CLI: "cpu", "cuda" or "cuda:N" (a bare "N" is
    read as "cuda:N") -> ("cpu", 0) or ("cuda", N)."""
    t = str(text).strip().lower()
    if t == "cpu":
        return ("cpu", 0)
    if t.isdigit():
        return ("cuda", int(t))
    if t == "cuda":
        return ("cuda", 0)
    if t.startswith("cuda:") and t[5:].isdigit():
        return ("cuda", int(t[5:]))
    raise InputError(f"unknown device {text!r}: use cpu, cuda or cuda:N (N = GPU index)")


# Per-frame stages the predictor times (milliseconds per frame; "total" = the whole step), and
# the stages that do work (all but "total").
TIMED_STAGES: tuple[str, ...] = (
    "preprocess", "query_encoder", "read_decoder", "memory_encoder", "postprocess", "total"
)
WORK_STAGES: tuple[str, ...] = TIMED_STAGES[:-1]


# Graph and tensor names. Export writes them into the ONNX files and the manifest; every consumer
# reads the manifest, and these constants are what the manifest is checked against.
class Graph:
    QUERY_ENCODER = "query_encoder"
    MEMORY_ENCODER = "memory_encoder"
    READ_DECODER = "read_decoder"
    ALL = (QUERY_ENCODER, MEMORY_ENCODER, READ_DECODER)


class Tensor:
    # query_encoder
    FRAME = "frame"  # (1, 3, H, W) uint8
    QUERY_KEY = "query_key"  # (1, Ck, H/16, W/16) float
    QUERY_VALUE = "query_value"  # (1, Cv, H/16, W/16) float
    SKIP8 = "skip8"  # (1, C8, H/8, W/8) float
    SKIP4 = "skip4"  # (1, C4, H/4, W/4) float
    # memory_encoder (FRAME as above)
    PROBS = "probs"  # (O, H, W) float in [0, 1]
    MEM_KEY = "mem_key"  # (O, Ck, H/16, W/16); (1, ...) for a shared-key model
    MEM_VALUE = "mem_value"  # (O, Cv, H/16, W/16)
    # read_decoder (QUERY_*, SKIP* as above)
    BANK_KEY = "bank_key"  # (O, T, Ck, H/16, W/16); (1, ...): object-free (shared keys)
    BANK_VALUE = "bank_value"  # (O, T, Cv, H/16, W/16)
    BANK_VALID = "bank_valid"  # (O, T) float, 1 = filled slot
    LOGITS = "logits"  # (O, H, W) per-object foreground logits (before aggregation)
    OBJ_PROBS = "obj_probs"  # (O, H, W) float32 soft-aggregated object probabilities
    LABELS = "labels"  # (H, W) uint8 argmax slot: 0 = background, k = k-th object


class Precision:
    """Graph precisions and the I/O dtypes of each: the one list export, calib, the backends and
    the CLIs read."""

    FP32 = "fp32"
    FP16 = "fp16"  # strongly typed mixed precision (export/fp16.py)
    INT8 = "int8"  # Q/DQ graphs from `mlvos calib` (I/O as fp32)
    BF16 = "bf16"  # the torch backend only
    GRAPHS: tuple[str, ...] = (FP32, FP16, INT8)  # what an export directory can hold
    EXPORTED: tuple[str, ...] = (FP32, FP16)  # what `mlvos export` writes
    TORCH: tuple[str, ...] = (FP32, FP16, BF16)  # what the torch backend runs
    # I/O that an fp16 graph carries as float16; everything else keeps its fp32 dtype: frame
    # uint8; probs, bank_valid, logits, obj_probs float32 (probabilities and the validity mask
    # feed FP32 math; logits/obj_probs come out of the FP32 soft aggregation); labels uint8.
    # Query features and the memory bank in float16 halve the bank's memory and bandwidth.
    HALF_IO: frozenset[str] = frozenset({
        Tensor.QUERY_KEY, Tensor.QUERY_VALUE, Tensor.SKIP8, Tensor.SKIP4,
        Tensor.MEM_KEY, Tensor.MEM_VALUE, Tensor.BANK_KEY, Tensor.BANK_VALUE,
    })

    @classmethod
    def io_dtype(cls, precision: str, tensor: str, fp32_dtype: str) -> str:
        """numpy dtype name of graph I/O `tensor` at `precision`, given its fp32 dtype."""
        return "float16" if precision == cls.FP16 and tensor in cls.HALF_IO else fp32_dtype


# A tensor dim: an int where fixed, else a symbol: "O" (objects), "H", "W" (padded frame size) or
# a fraction of one, "H/16", "W/4", ... (feature maps).
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the manifest records it."""

    name: str
    dtype: str  # numpy dtype name: "uint8", "float32", "float16"
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping) -> TensorSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


def resolve_shape(shape: tuple[Dim, ...], env: Mapping[str, int]) -> tuple[int, ...]:
    """Concrete dims of a symbolic shape: ints stay, "O" / "H" / "W" and "H/16"-style fractions
    are looked up in `env` (e.g. {"O": 2, "H": 480, "W": 864})."""
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
            continue
        base, _, div = str(d).partition("/")
        if base not in env or (div and not div.isdigit()):
            raise InputError(f"cannot resolve dim {d!r} of shape {shape} (known: {sorted(env)})")
        out.append(env[base] // int(div) if div else env[base])
    return tuple(out)


@dataclass(frozen=True)
class Padding:
    """Centered padding of a frame to a multiple of the stride: (top, bottom, left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def as_torch(self) -> tuple[int, int, int, int]:
        """Order expected by torch.nn.functional.pad on (..., H, W): (left, right, top, bottom)."""
        return (self.left, self.right, self.top, self.bottom)


def padded_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Smallest (H, W) >= (height, width) that are multiples of `stride`."""
    return (-(-height // stride) * stride, -(-width // stride) * stride)


def padding_for(height: int, width: int, stride: int) -> Padding:
    """STM's centered padding: floor(diff/2) before, the rest after."""
    ph, pw = padded_size(height, width, stride)
    dh, dw = ph - height, pw - width
    return Padding(dh // 2, dh - dh // 2, dw // 2, dw - dw // 2)


def pad_array(x: np.ndarray, pad: Padding, *, value: float = 0) -> np.ndarray:
    """Pad the last two axes of `x` (..., H, W) with a constant."""
    widths = [(0, 0)] * (x.ndim - 2) + [(pad.top, pad.bottom), (pad.left, pad.right)]
    return np.pad(x, widths, mode="constant", constant_values=value)


def unpad_array(x: np.ndarray, pad: Padding) -> np.ndarray:
    """Crop the last two axes of `x` back to the unpadded size (a view, no copy)."""
    h, w = x.shape[-2:]
    return x[..., pad.top : h - pad.bottom, pad.left : w - pad.right]


def frame_to_input(frame: np.ndarray, pad: Padding) -> np.ndarray:
    """(H, W, 3) uint8 RGB frame -> the graphs' `frame` input: (1, 3, H', W') uint8, padded.

    The one place a frame becomes a network input (predictor, profiling and checks use it)."""
    return pad_array(np.ascontiguousarray(frame.transpose(2, 0, 1)), pad)[None]


# ---------------------------------------------------------------- resizing (numpy only: no OpenCV
# or PIL on the device)
def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Half-pixel centers, as OpenCV/PyTorch bilinear (align_corners=False).
    x = (np.arange(dst, dtype=np.float32) + 0.5) * (src / dst) - 0.5
    x = np.clip(x, 0, src - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, C) uint8, bilinear with half-pixel centers."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    r0, r1, rw = _axis_weights(h, height)
    c0, c1, cw = _axis_weights(w, width)
    x = img.astype(np.float32)
    rows = x[r0] * (1 - rw)[:, None, None] + x[r1] * rw[:, None, None]
    out = rows[:, c0] * (1 - cw)[None, :, None] + rows[:, c1] * cw[None, :, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) label map -> (height, width), nearest neighbour (never invents ids)."""
    h, w = labels.shape[:2]
    if (h, w) == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def internal_size(height: int, width: int, max_side: int | None,
                  scale: float = 1.0) -> tuple[int, int]:
    """Size the network sees: the frame scaled by `scale`, then down so that its longer side is
    at most `max_side` (if given)."""
    if scale != 1.0:
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))
