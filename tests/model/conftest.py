"""Shared fixtures of the model/training tests."""

import pytest


@pytest.fixture(scope="session")
def davis(tmp_path_factory):
    """A small synthetic DAVIS-layout dataset (2 sequences x 6 frames of 64x80, split 'train')."""
    from mlvos.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data") / "D"
    make_synthetic_dataset(root, sequences=2, frames=6, seed=5, height=64, width=80,
                           split="train")
    return root
