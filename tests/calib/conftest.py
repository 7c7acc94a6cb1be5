"""Shared fixtures of the calibration tests: an untrained tiny export (FP32 only, capacity 4) and
two small synthetic datasets (calibration and validation, different seeds), 64x96 frames."""

from __future__ import annotations

from pathlib import Path

import pytest

CAPACITY = 4
HEIGHT, WIDTH = 64, 96


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    import torch

    from mlvos.export.api import export_checkpoint
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.registry import build_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a 2-vCPU machine
    try:
        root = tmp_path_factory.mktemp("calib-export")
        ckpt = root / "tiny.pt"
        save_checkpoint(ckpt, build_model("tiny", seed=0))
        return export_checkpoint(
            ckpt,
            root / "export",
            capacity=CAPACITY,
            precisions=("fp32",),
            validate=False,
            representative_size=(HEIGHT, WIDTH),
            representative_frames=2,
        )
    finally:
        torch.set_num_threads(before)


def _make_dataset(path: Path, seed: int, *, sequences: int = 2, frames: int = 5, **kw) -> Path:
    from mlvos.data.synth import make_synthetic_dataset

    kw.setdefault("height", HEIGHT)
    kw.setdefault("width", WIDTH)
    return make_synthetic_dataset(
        path, sequences=sequences, frames=frames, seed=seed, max_objects=3, **kw
    )


@pytest.fixture(scope="session")
def make_data():
    """make_data(path, seed, sequences=2, frames=5, **synth options) -> dataset path."""
    return _make_dataset


@pytest.fixture(scope="session")
def calib_data(tmp_path_factory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("calib-data") / "synth", seed=11)


@pytest.fixture(scope="session")
def val_data(tmp_path_factory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("val-data") / "synth", seed=12)
