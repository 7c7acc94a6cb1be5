"""The inputs of `mlvos check`: per-graph feeds recorded from a real propagation, saved in
Polygraphy's JSON format, and the `polygraphy run` lines that replay a comparison from them.

Feeds are recorded by the runtime's own frame loop (calib.record.record: VideoPredictor over the
FP32 graphs on onnxruntime, the RecordingRunner proxy), from a DAVIS-layout dataset or a short
synthetic video. They carry the FP32 graphs' input dtypes; `cast_feeds` gives them the dtypes
another precision's graph takes (fp16: float16 features and bank, spec.Precision.HALF_IO), as
its manifest entry records them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.runtime.manifest import Manifest

Feed = dict[str, np.ndarray]

# The synthetic video used without --data: frames, objects, and the size when the manifest
# records no representative size. 12 frames fill the bank at mem_every 5 (frames 0, 5, 10 +
# the previous one), so later samples read a full memory.
SYNTH_FRAMES, SYNTH_OBJECTS, SYNTH_SIZE = 12, 2, (192, 320)
# Polygraphy's atol of an output it must not judge (labels: uint8, judged by mismatch share).
UNJUDGED_ATOL = 255.0


@dataclass
class _Video:
    """One in-memory video with the interface calib.record reads from a dataset's sequences."""

    frames: list[np.ndarray]
    first: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def first_mask(self) -> np.ndarray:
        return self.first

    def read_frame(self, t: int) -> np.ndarray:
        return self.frames[t]


def _synthetic_dataset(manifest: Manifest, seed: int) -> tuple[dict[str, _Video], dict]:
    """A one-video dataset of SYNTH_FRAMES frames at the export's static size, else the size of
    its representative data (the export's own validation video), and its description."""
    from mlvos.data.synth import synth_sequence

    size = manifest.static_size
    if size is None:
        real = (manifest.data.get("representative") or {}).get("real") or {}
        size = tuple(real.get("size") or SYNTH_SIZE)
    h, w = int(size[0]), int(size[1])
    pairs = list(synth_sequence(seed, SYNTH_FRAMES, h, w, num_objects=SYNTH_OBJECTS))
    video = _Video([f for f, _ in pairs], pairs[0][1])
    info = {"kind": "synthetic", "generator": "mlvos.data.synth.synth_sequence", "seed": seed,
            "frames": SYNTH_FRAMES, "objects": SYNTH_OBJECTS, "size": [h, w]}
    return {"synthetic": video}, info


def record_feeds(
    export_dir: Path,
    manifest: Manifest,
    *,
    data: str | Path | None,
    split: str,
    sequences: list[str] | None,
    samples: int,
    mem_every: int,
    seed: int,
    threads: int | None,
) -> tuple[dict[str, list[Feed]], dict[str, Any]]:
    """Record `samples` feeds per graph by propagating `data` (or a synthetic video) with the FP32
    graphs. Returns ({graph: [feed]}, a description of the data for the report).

    Raises:
        CalibDataError / TooFewSamplesError: unusable data, too few frames.
    """
    from mlvos.calib.record import (
        check_frames,
        check_objects,
        open_dataset,
        record,
        select_positions,
    )

    if data is None:
        ds, info = _synthetic_dataset(manifest, seed)
        names = list(ds)
    else:
        ds, names = open_dataset(data, split, sequences, "--data")
        check_objects(ds, names, "--data")
        check_frames(
            ds, names, stride=manifest.stride, static_size=manifest.static_size, what="--data"
        )
        info = {"kind": "dataset", "root": str(Path(data).resolve()), "split": split,
                "sequences": list(names)}
    positions = select_positions({n: len(ds[n]) for n in names}, samples)
    recorded = record(export_dir, ds, positions, mem_every=mem_every, threads=threads)
    info.update(mem_every=mem_every, positions=[[s, t] for s, t in positions])
    return recorded.feeds, info


def cast_feeds(feeds: list[Feed], manifest: Manifest, graph: str, precision: str) -> list[Feed]:
    """The recorded (fp32-graph) feeds in the input dtypes of `graph` at `precision`, as its
    manifest entry records them (fp16: float16 features and bank, Precision.HALF_IO)."""
    info = manifest.graph(graph, precision, verify=False)
    return [
        {t.name: np.ascontiguousarray(feed[t.name], dtype=t.dtype) for t in info.inputs}
        for feed in feeds
    ]


def _dtype_key(manifest: Manifest, graph: str, precision: str) -> tuple[str, ...]:
    return tuple(t.dtype for t in manifest.graph(graph, precision, verify=False).inputs)


def save_feeds(path: Path, feeds: list[Feed]) -> Path:
    """Write `feeds` in the format `polygraphy run --load-inputs` reads (atomically)."""
    from polygraphy.json import to_json

    from mlvos.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, to_json(feeds) + "\n")
    return path


def load_feeds(path: Path) -> list[Feed]:
    """Feeds as `polygraphy run --load-inputs` reads them: what is compared is what was saved."""
    from polygraphy.json import load_json

    return [dict(feed) for feed in load_json(str(path))]


def save_results(run, path: Path) -> None:
    """Write Polygraphy RunResults in the format `polygraphy run --load-outputs` reads."""
    from mlvos.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, run.to_json() + "\n")


class FeedFiles:
    """The feeds of one graph saved once per distinct set of input dtypes (fp32 and int8 graphs
    share a file; fp16 graphs get theirs), named after the first precision that needs them."""

    def __init__(self, folder: Path, manifest: Manifest, graph: str, feeds: list[Feed]):
        self.folder, self.manifest, self.graph, self.feeds = folder, manifest, graph, feeds
        self.written: dict[tuple[str, ...], Path] = {}

    def path(self, precision: str) -> Path:
        key = _dtype_key(self.manifest, self.graph, precision)
        if key not in self.written:
            self.written[key] = save_feeds(
                self.folder / f"{self.graph}.{precision}.json",
                cast_feeds(self.feeds, self.manifest, self.graph, precision),
            )
        return self.written[key]


def polygraphy_command(
    model: Path,
    backend: str,
    feeds: Path,
    *,
    save_outputs: Path | None = None,
    load_outputs: Path | None = None,
    limits: dict[str, float] | None = None,
    unjudged: Sequence[str] = (),
) -> str:
    """The `polygraphy run` line that repeats one run (reference: --save-outputs) or one
    comparison (candidate: --load-outputs, the same per-output atol)."""
    argv = ["polygraphy", "run", str(model)]
    argv += ["--model-type", "engine", "--trt"] if backend == "trt" else ["--onnxrt"]
    argv += ["--load-inputs", str(feeds)]
    if save_outputs is not None:
        argv += ["--save-outputs", str(save_outputs)]
    if load_outputs is not None:
        argv += ["--load-outputs", str(load_outputs), "--check-error-stat", "max", "--rtol", "0"]
        atols = [f"{n}:{v:g}" for n, v in (limits or {}).items()]
        atols += [f"{n}:{UNJUDGED_ATOL:g}" for n in unjudged]
        argv += ["--atol", *atols]
    return shlex.join(argv)
