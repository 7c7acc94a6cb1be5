"""DAVIS palette PNG masks and RGB frames: read, write, validate. numpy + pillow only.

A mask is an (H, W) uint8 array of object ids: 0 = background, 1..255 = objects. On disk it is a
mode-'P' PNG with the standard DAVIS palette (the PASCAL VOC bit-interleaved colormap), so the
pixel values are the ids and viewers show the usual DAVIS colours.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError
from mlvos.fileio import atomic_write_bytes

# Modes whose pixel values are object ids directly. '1' is a bilevel PNG (0/1), 'I;16'/'I' are
# 16/32-bit grayscale that some tools write for label maps (accepted if every value fits in uint8).
_ID_MODES = ("P", "L", "1", "I;16", "I;16B", "I;16L", "I")


def davis_palette(n: int = 256) -> np.ndarray:
    """DAVIS / PASCAL VOC colormap: (n, 3) uint8; index 0 black, 1 (128,0,0), 2 (0,128,0), ..."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            # bit j of the id's three lowest bits goes to bit 7-j of R, G and B
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_PALETTE_BYTES = davis_palette().tobytes()


def _open(path: str | os.PathLike, what: str):
    """Open an image lazily (header only) or raise DatasetError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{what} file {path} does not exist (or is not a file); check the dataset path"
        )
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(
            f"cannot read {what} {path}: {e}; the file is truncated or not an image, "
            "re-extract or regenerate it"
        ) from e


def check_mask_mode(mode: str, path: str | os.PathLike) -> None:
    """Raise DatasetError unless a PIL image mode holds object ids (palette or single-channel)."""
    if mode in _ID_MODES or mode == "PA":
        return
    raise DatasetError(
        f"mask {path} has image mode '{mode}', expected a palette ('P') PNG or single-channel "
        "grayscale ('L') PNG of object ids; colour masks are ambiguous: convert to palette "
        "(e.g. map each colour to its DAVIS palette index and save with mlvos.palette."
        "write_mask)"
    )


def mask_header(path: str | os.PathLike) -> tuple[int, int]:
    """Validate a mask's mode from its header only (fast); return its (width, height)."""
    with _open(path, "mask") as img:
        check_mask_mode(img.mode, path)
        return img.size


def frame_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image from its header only; DatasetError if unreadable."""
    with _open(path, "frame") as img:
        return img.size


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an object-id mask.

    Accepts palette ('P', the DAVIS format; values are palette indices = ids) and single-channel
    grayscale PNGs (values are ids). Binary 0/255 masks are returned as is (0/255); see
    `binary_to_ids`.

    Returns:
        (H, W) uint8 object ids.

    Raises:
        DatasetError: file missing/unreadable, an RGB/RGBA (non-palette) mask, or ids > 255.
    """
    with _open(path, "mask") as img:
        check_mask_mode(img.mode, path)
        try:
            if img.mode == "PA":
                img = img.convert("P")  # alpha carries no ids; keep the index plane
            arr = np.asarray(img)
        except OSError as e:
            raise DatasetError(f"cannot decode mask {path}: {e}; the file is truncated") from e
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        hi = int(arr.max()) if arr.size else 0
        if arr.min(initial=0) < 0 or hi > 255:
            raise DatasetError(
                f"mask {path} ({img.mode}) holds value {hi}, expected object ids in 0..255; "
                "save it as an 8-bit palette PNG"
            )
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def binary_to_ids(mask: np.ndarray) -> np.ndarray:
    """Map a binary 0/255 mask to ids 0/1; any other mask is returned unchanged.

    Args:
        mask: (H, W) uint8.
    """
    values = np.unique(mask)
    if values.size and set(values.tolist()) <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    return mask


def encode_mask(ids: np.ndarray) -> bytes:
    """Encode (H, W) integer ids in 0..255 as DAVIS palette PNG bytes (deterministic)."""
    from PIL import Image

    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.size == 0:
        raise InputError(
            f"mask must be a non-empty (H, W) array of object ids, received shape {ids.shape}; "
            "squeeze channel dimensions first"
        )
    if ids.dtype != np.uint8:
        if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype == bool):
            raise InputError(
                f"mask must hold integer object ids, received dtype {ids.dtype}; "
                "round/threshold it and cast to uint8"
            )
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi > 255:
            raise InputError(
                f"mask ids must be in 0..255, received range {lo}..{hi}; relabel the objects"
            )
        ids = ids.astype(np.uint8)
    # fromarray gives mode 'L'; putpalette turns it into 'P' without touching the values
    img = Image.fromarray(np.ascontiguousarray(ids))
    img.putpalette(_PALETTE_BYTES)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_mask(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write (H, W) object ids (0..255) atomically as a DAVIS palette PNG."""
    atomic_write_bytes(path, encode_mask(ids))


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (grayscale is replicated, alpha dropped)."""
    with _open(path, "frame") as img:
        try:
            if img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img)
        except OSError as e:
            raise DatasetError(f"cannot decode frame {path}: {e}; the file is truncated") from e
    return np.ascontiguousarray(arr)


def encode_frame(rgb: np.ndarray, *, quality: int = 90, fmt: str = "JPEG") -> bytes:
    """Encode (H, W, 3) uint8 RGB as JPEG (fixed quality: deterministic bytes) or PNG."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(
            f"frame must be (H, W, 3) uint8 RGB, received shape {rgb.shape} dtype {rgb.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt.upper() in ("JPEG", "JPG"):
        img.save(buf, format="JPEG", quality=int(quality))
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def write_frame(path: str | os.PathLike, rgb: np.ndarray, *, quality: int = 90) -> None:
    """Write (H, W, 3) uint8 RGB atomically; JPEG for .jpg/.jpeg, PNG otherwise."""
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    atomic_write_bytes(path, encode_frame(rgb, quality=quality, fmt=fmt))


def colorize(ids: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids -> (H, W, 3) uint8 RGB in DAVIS colours, for overlays and debugging."""
    return davis_palette()[np.asarray(ids, dtype=np.uint8)]
