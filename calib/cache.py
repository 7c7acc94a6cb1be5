"""Cache of the recorded calibration feeds: one npz per graph plus meta.json, in one folder.

The key covers everything the feeds depend on: the sha256 of the three FP32 graphs (what runs),
the dataset (resolved path, split, and a hash of every listed frame's and mask's relative path,
size and mtime), and the recording options (positions, mem_every). A cache whose key differs,
whose files are missing or whose sha256 sums do not match is stale: it is deleted and rebuilt
(the folder is replaced atomically, so a reader never sees a half-written cache). Calibrations
sharing a cache take turns (`load_or_record` holds the folder's lock): the second one waits for the
first to record, then reuses what it recorded.

npz layout: key "<sample index>/<input name>" -> array (shapes differ between samples: object
count, frame size).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.calib.record import CalibrationData
from mlvos.fileio import atomic_dir, file_lock, sha256_file, stable_json
from mlvos.logs import stamped
from mlvos.runtime.spec import Graph

logger = logging.getLogger(__name__)

CACHE_FORMAT = "mlvos-calib-cache"
# Bump when what is recorded changes (record.py), so older caches are rebuilt.
CACHE_VERSION = 1
META_FILE = "meta.json"
# How long a calibration waits for another one recording into the same cache (a recording
# propagates every calibration video: minutes on a CPU).
LOCK_TIMEOUT_S = 3600.0


def dataset_fingerprint(ds, names: Sequence[str]) -> str:
    """sha256 over (relative path, size, mtime_ns) of the split file and every frame and mask of
    the sequences `names`: any added, removed, replaced or touched file changes it."""
    h = hashlib.sha256()
    root = Path(ds.root)
    split_file = root / "ImageSets" / ds.year / f"{ds.split}.txt"
    paths: list[Path] = [split_file] if split_file.is_file() else []
    for name in names:
        seq = ds[name]
        paths += list(seq.frames) + [m for m in seq.masks if m is not None]
    for p in paths:
        st = p.stat()
        h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(
    *,
    fp32_sha256: dict[str, str],
    dataset: dict[str, Any],
    positions: list[tuple[str, int]],
    mem_every: int,
) -> dict[str, Any]:
    """The JSON-able key of a recording (see the module docstring)."""
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "fp32_graphs": dict(sorted(fp32_sha256.items())),
        "dataset": dataset,
        "positions": [[s, int(t)] for s, t in positions],
        "mem_every": int(mem_every),
    }


def load(folder: str | os.PathLike, key: dict[str, Any]) -> tuple[CalibrationData | None, str]:
    """The cached data for `key`, or (None, why it cannot be used)."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        return None, "no cache yet"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"unreadable {META_FILE} ({e})"
    if meta.get("key") != key:
        old = meta.get("key") if isinstance(meta.get("key"), dict) else {}
        changed = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        return None, f"stale (changed: {', '.join(changed) or 'format'})"
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    n = len(key["positions"])
    for graph in Graph.ALL:
        entry = meta.get("files", {}).get(graph, {})
        path = folder / entry.get("file", f"{graph}.npz")
        if not path.is_file():
            return None, f"{path.name} is missing"
        if sha256_file(path) != entry.get("sha256"):
            return None, f"{path.name} does not match its sha256 (modified or truncated)"
        samples: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        try:
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    i, name = k.split("/", 1)
                    samples[int(i)][name] = z[k]
        except (OSError, ValueError, IndexError) as e:
            return None, f"{path.name} is unreadable ({e})"
        feeds[graph] = samples
    positions = [(s, int(t)) for s, t in key["positions"]]
    return CalibrationData(positions, feeds), "reused"


def save(folder: str | os.PathLike, key: dict[str, Any], data: CalibrationData) -> None:
    """Write `data` under `key`, replacing whatever the folder held (atomically)."""
    folder = Path(folder)
    with atomic_dir(folder, force=True) as tmp:
        files = {}
        for graph in Graph.ALL:
            arrays = {
                f"{i:05d}/{name}": value
                for i, feed in enumerate(data.feeds[graph])
                for name, value in feed.items()
            }
            path = tmp / f"{graph}.npz"
            np.savez(path, **arrays)
            files[graph] = {"file": path.name, "sha256": sha256_file(path)}
        meta = {"key": key, "files": files, "samples": len(data)}
        (tmp / META_FILE).write_text(stable_json(meta), encoding="utf-8")


def load_or_record(
    folder: str | os.PathLike,
    key: dict[str, Any],
    produce: Callable[[], CalibrationData],
) -> tuple[CalibrationData, bool]:
    """(data, reused): the cache under `key` if valid, else produce(), saved in its place.

    Raises:
        BusyError: another process held the cache for LOCK_TIMEOUT_S seconds.
    """
    with file_lock(folder, timeout=LOCK_TIMEOUT_S, what=f"calibration cache {folder}"):
        data, why = load(folder, key)
        if data is not None:
            logger.info(stamped(f"calibration cache {folder}: reused ({len(data)} samples)"))
            return data, True
        logger.info(stamped(f"calibration cache {folder}: {why}; recording"))
        data = produce()
        save(folder, key, data)
        return data, False
