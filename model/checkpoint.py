"""Checkpoints: one file that loads with torch.load(weights_only=True) and rebuilds its model.

Layout (plain dict):
    format: "mlvos-checkpoint", format_version: 1, mlvos_version: str,
    variant: str, config: dict (ModelConfig.to_dict), stage: str, iteration: int,
    model: state_dict, extra: dict (training state such as optimizer/RNG, optional)

The file is sealed with its own sha256: the zip archive's comment, the last bytes of the file,
reads "mlvos-sha256:<hex>" with the hex of every byte before it (torch.load and zip readers skip
the comment). read_checkpoint checks the seal before torch.load sees the file, so a truncated or
bit-flipped checkpoint is refused, never deserialized.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mlvos import __version__
from mlvos.errors import CheckpointError
from mlvos.fileio import atomic_path, sha256_file
from mlvos.model.config import ModelConfig
from mlvos.model.network import STMNet
from mlvos.model.registry import build_model

FORMAT = "mlvos-checkpoint"
FORMAT_VERSION = 1
SEAL_TAG = b"mlvos-sha256:"
_SEAL_LEN = len(SEAL_TAG) + 64
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes, then the comment


def save_checkpoint(
    path: str | os.PathLike,
    model: STMNet,
    *,
    stage: str = "init",
    iteration: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlvos_version": __version__,
        "variant": model.variant,
        "config": model.config.to_dict(),
        "stage": stage,
        "iteration": int(iteration),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return write_checkpoint_state(path, state)


def write_checkpoint_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (temp file + rename), sealed with its sha256."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        _seal(tmp)
    return path


def _seal(path: Path) -> None:
    """Append the file's sha256 as its zip comment (see the module docstring)."""
    with open(path, "r+b") as f:
        f.seek(-22, os.SEEK_END)
        eocd = f.read(22)
        if eocd[:4] != _EOCD or eocd[-2:] != b"\0\0":
            raise CheckpointError(
                f"torch {torch.__version__} wrote {path} without a plain zip end record; mlvos "
                "cannot seal it with its sha256. Use a torch version listed in constraints.txt"
            )
        f.seek(-2, os.SEEK_END)  # the comment length, then the comment
        f.write(_SEAL_LEN.to_bytes(2, "little") + SEAL_TAG)
        f.flush()
        digest = sha256_file(path)
        f.seek(0, os.SEEK_END)
        f.write(digest.encode("ascii"))


def _check_seal(path: Path) -> bool:
    """Verify the file's seal before anything reads it as a checkpoint.

    Returns:
        True if sealed and intact; False if it carries no seal (written by an older mlvos or by
        plain torch.save, cut before its zip end record, or a flipped bit in the seal's tag):
        _zip_check then applies.

    Raises:
        CheckpointError: the seal is cut off or does not match the bytes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 22 - _SEAL_LEN))
        tail = f.read()
        at = tail.rfind(_EOCD)
        comment = tail[at + 22:] if at >= 0 else b""
        if (at < 0 or tail[at + 20:at + 22] != _SEAL_LEN.to_bytes(2, "little")
                or comment[:len(SEAL_TAG)] != SEAL_TAG[:len(comment)]):
            return False
        recorded = comment[len(SEAL_TAG):]
        if len(comment) != _SEAL_LEN or not re.fullmatch(rb"[0-9a-f]{64}", recorded):
            raise CheckpointError(
                f"{path} is truncated or corrupted: the sha256 sealed at its end is cut off or "
                "damaged, so it was not loaded. Restore it from a copy or re-create it "
                "(`mlvos model init`, `mlvos train`)"
            )
        h, left = hashlib.sha256(), size - 64
        f.seek(0)
        while left > 0:
            block = f.read(min(1 << 20, left))
            h.update(block)
            left -= len(block)
    if h.hexdigest() != recorded.decode():
        raise CheckpointError(
            f"{path} does not match the sha256 sealed into it when it was written "
            f"(sha256 {h.hexdigest()[:12]}... vs {recorded.decode()[:12]}...): the file is "
            "corrupted, so it was not loaded. Restore it from a copy or re-create it "
            "(`mlvos model init`, `mlvos train`)"
        )
    return True


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    detail = str(e).splitlines()[0] if str(e) else ""
    return CheckpointError(
        f"{path} is not a readable checkpoint (truncated or not a torch file; "
        f"{type(e).__name__}: {detail[:200]}). Re-create it with `mlvos model init` or "
        "`mlvos train`"
    )


def _zip_check(path: Path) -> None:
    """An unsealed file: check its zip structure and every record's CRC32 before torch.load (a
    truncated file has no zip end record left, a flipped bit fails its record's CRC)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # BadZipFile, zlib.error, EOFError, OSError, ...
        raise _unreadable(path, e) from None
    if bad is not None:
        raise CheckpointError(
            f"{path} is corrupted (its record {bad} fails its CRC32 check), so it was not "
            "loaded. Restore it from a copy or re-create it (`mlvos model init`, `mlvos train`)"
        )


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (no model built).

    The file's seal (or, for an unsealed file, its zip CRC32s) is checked before torch.load.

    Raises:
        CheckpointError: missing, truncated, corrupted, not a torch file, or not an mlvos
            checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    if not _check_seal(path):
        _zip_check(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError, ...
        raise _unreadable(path, e) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not an mlvos checkpoint (no format={FORMAT!r} entry); "
            "bare state dicts are not accepted because they cannot rebuild their model"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, newer than this mlvos "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade mlvos"
        )
    for key in ("variant", "config", "model"):
        if key not in state:
            raise CheckpointError(f"{path} lacks the {key!r} entry; the file is incomplete")
    return state


def load_model(
    path: str | os.PathLike, *, variant: str | None = None, map_location: str = "cpu"
) -> tuple[STMNet, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights strictly.

    Args:
        path: checkpoint file.
        variant: if given, the checkpoint must be of this variant.

    Returns:
        (model in eval mode, raw checkpoint dict).

    Raises:
        CheckpointError: unreadable file, wrong variant, or missing/unexpected/mis-shaped keys.
    """
    state = read_checkpoint(path)
    if variant is not None and state["variant"] != variant:
        raise CheckpointError(
            f"{path} is a checkpoint of variant {state['variant']!r}, expected {variant!r}; "
            f"pass --variant {state['variant']} or use a checkpoint of {variant!r}"
        )
    config = ModelConfig.from_dict(state["config"])
    model = build_model(state["variant"], config)
    load_state_strict(model, state["model"], source=str(path))
    return model.to(map_location).eval(), state


def with_read_options(
    model: STMNet, *, topk: int | None = None, kernel: float | None = None
) -> STMNet:
    """`model` with other memory-read priors (ModelConfig.read_topk / read_kernel), no retraining.

    The priors add no parameters and no module reads them but `read_decode`, so the new model
    is `model`'s module tree with the `dataclasses.replace`d config and the same weights. `mlvos
    infer` and `mlvos export` (--read-topk / --read-kernel) and everything that reloads an
    export's checkpoint (its manifest records the effective config) go through here.

    Args:
        model: a built model (e.g. from load_model).
        topk: new ModelConfig.read_topk (0 = off); None keeps the model's.
        kernel: new ModelConfig.read_kernel (sigma in feature cells, 0 = off); None keeps it.

    Returns:
        `model` itself when nothing changes; otherwise a new STMNet (same variant, device,
        dtype, memory format and train/eval mode) sharing `model`'s parameter and buffer tensors.

    Raises:
        ConfigError: a negative or non-numeric value.
    """
    changes = {}
    if topk is not None:
        changes["read_topk"] = topk
    if kernel is not None:
        is_int = isinstance(kernel, int) and not isinstance(kernel, bool)
        changes["read_kernel"] = float(kernel) if is_int else kernel
    config = dataclasses.replace(model.config, **changes)
    config.validate()
    if config == model.config:
        return model
    # deepcopy with every tensor in the memo: new modules, no weight copied (the paper variant
    # holds 0.5 GB), non-persistent buffers (input normalization) included.
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    rebuilt = copy.deepcopy(model, memo=shared)
    rebuilt.config = config
    return rebuilt


def load_state_strict(model: STMNet, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise CheckpointError(
            f"weights in {source} do not match the {model.variant!r} model: " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)
