"""Calibration data from real propagation: the FP32 graphs run by the runtime's own frame loop
(OrtRunner + VideoPredictor) over the videos of a DAVIS-layout dataset; the RecordingRunner proxy
records the exact inputs each graph receives at selected frames.

What a sample holds (one selected frame t >= 1 of one video):
    query_encoder:  frame (1, 3, H, W) uint8, padded as the runtime pads it;
    read_decoder:   the query features of that frame and the memory bank as the runtime holds it
                    then: (O, T, ...) float32, partially filled (empty slots zero, bank_valid 0);
    memory_encoder: the frame and the probabilities written to memory for it (O, H, W) float32
                    (the read's soft-aggregated prediction).
Frame 0 only writes the annotation into memory, so samples start at t = 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlvos.calib.errors import CalibDataError, TooFewSamplesError
from mlvos.errors import DatasetError
from mlvos.logs import stamped
from mlvos.runtime.backends.onnxrt import OrtRunner
from mlvos.runtime.backends.recording import RecordingRunner
from mlvos.runtime.spec import MIN_SIDE, padded_size

Feed = dict[str, np.ndarray]

logger = logging.getLogger(__name__)


@dataclass
class CalibrationData:
    """Recorded feeds per graph (same order in every graph: one per position)."""

    positions: list[tuple[str, int]]  # (sequence, frame index) of each sample
    feeds: dict[str, list[Feed]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positions)


def open_dataset(root: str | Path, split: str, sequences: Sequence[str] | None, what: str):
    """DavisDataset of `root` restricted to `sequences` (default: all of the split).

    Raises:
        CalibDataError: missing folder, wrong layout, empty split, unknown sequence names.
    """
    from mlvos.data.datasets import DavisDataset

    try:
        ds = DavisDataset(root, split=split)
    except DatasetError as e:
        raise CalibDataError(
            f"{what} {root} is not a usable DAVIS-layout dataset: {e}. Expected "
            "JPEGImages/480p/<seq>/*.jpg, Annotations/480p/<seq>/*.png and "
            f"ImageSets/2017/{split}.txt (e.g. `mlvos data synth --out DIR --split {split}`)"
        ) from e
    names = list(sequences) if sequences else ds.sequences
    unknown = [n for n in names if n not in ds.sequences]
    if unknown:
        raise CalibDataError(
            f"sequences {unknown} are not in {root} ({split}); available: {ds.sequences}"
        )
    return ds, names


def check_frames(ds, names: Sequence[str], *, stride: int, static_size, what: str) -> None:
    """Every sequence's frames must be at least max(stride, MIN_SIDE) on each side, and pad to
    the export's static size when it has one.

    Raises:
        CalibDataError: a sequence whose frames do not fit the model.
    """
    from mlvos.palette import frame_size

    low = max(stride, MIN_SIDE)
    for name in names:
        seq = ds[name]
        w, h = frame_size(seq.frames[0])
        if min(h, w) < low:
            raise CalibDataError(
                f"{what}: sequence {name} has {h}x{w} frames (HxW); this model needs both sides "
                f">= {low} (its stride is {stride}); use larger frames"
            )
        if static_size is not None and padded_size(h, w, stride) != tuple(static_size):
            ph, pw = padded_size(h, w, stride)
            raise CalibDataError(
                f"{what}: sequence {name} has {h}x{w} frames (padded {ph}x{pw}) but the export "
                f"is static at {static_size[0]}x{static_size[1]}; use frames of that padded size "
                "or export with dynamic size (no --height/--width)"
            )


def select_positions(
    lengths: dict[str, int], samples: int, *, selection: str = "even", seed: int = 0
) -> list[tuple[str, int]]:
    """Pick `samples` (sequence, frame) positions among the frames t >= 1 of all sequences.

    even: evenly spaced over the concatenated frame list (every video contributes in proportion
    to its length, early and late frames alike); random: uniformly without replacement (seeded).
    Returned in propagation order.

    Raises:
        TooFewSamplesError: fewer usable frames than `samples`.
    """
    candidates = [(name, t) for name, n in lengths.items() for t in range(1, n)]
    if len(candidates) < samples:
        raise TooFewSamplesError(
            f"{samples} calibration samples requested but the dataset has only "
            f"{len(candidates)} usable frames ({len(lengths)} sequence(s); frame 0 of each is the "
            "annotation); add sequences or frames, or lower --samples"
        )
    if selection == "even":
        idx = np.unique(np.round(np.linspace(0, len(candidates) - 1, samples)).astype(int))
    elif selection == "random":
        idx = np.sort(np.random.default_rng(seed).choice(len(candidates), samples, replace=False))
    else:
        raise ValueError(f"unknown selection {selection!r}")
    return [candidates[i] for i in idx]


def record(
    export_dir: str | Path,
    ds,
    positions: list[tuple[str, int]],
    *,
    mem_every: int,
    threads: int | None = None,
) -> CalibrationData:
    """Propagate the sequences of `positions` with the FP32 graphs and record the feeds at them.

    A sequence is propagated from its first-frame annotation up to its last selected frame.
    """
    from mlvos.runtime.manifest import Manifest
    from mlvos.runtime.predictor import VideoPredictor

    wanted: dict[str, set[int]] = {}
    for name, t in positions:
        wanted.setdefault(name, set()).add(t)
    runner = RecordingRunner(OrtRunner(Manifest.load(export_dir), "fp32", threads=threads))
    with runner:
        for name, frames in wanted.items():
            seq = ds[name]
            # prev_every=1: every frame runs all three graphs, so each selected frame gives one
            # feed per graph whatever the model's default schedule (tiny skips the memory
            # encoder on most frames)
            pred = VideoPredictor(runner, mem_every=mem_every, prev_every=1)
            pred.add_mask(0, seq.first_mask())
            for t in range(max(frames) + 1):
                runner.recording = t in frames
                pred.step(seq.read_frame(t))
            runner.recording = False
            logger.info(stamped(
                f"recorded {len(frames)} sample(s) from {name} (frames 0..{max(frames)})"
            ))
    data = CalibrationData(list(positions), runner.feeds)
    for graph, feeds in data.feeds.items():
        if len(feeds) != len(positions):  # a frame where the predictor ran no read (no object)
            raise TooFewSamplesError(
                f"{graph}: recorded {len(feeds)} feeds for {len(positions)} positions; every "
                "sequence's first-frame annotation must hold at least one object"
            )
    return data


def check_objects(ds, names: Sequence[str], what: str) -> None:
    """Raise CalibDataError for a sequence whose first-frame annotation is empty."""
    for name in names:
        try:
            first = ds[name].first_mask()
        except DatasetError as e:
            raise CalibDataError(f"{what}: {e}") from e
        if not first.any():
            raise CalibDataError(
                f"{what}: sequence {name}'s first-frame annotation {ds[name].masks[0]} holds no "
                "object (all pixels 0); semi-supervised propagation needs at least one"
            )
