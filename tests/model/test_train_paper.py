"""The `paper` variant (123 M parameters) trains on CPU: a smoke run of the trainer and an
overfit check on one fixed clip at 64x64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlvos.cli import main
from mlvos.data.synth import synth_clip
from mlvos.model.checkpoint import read_checkpoint
from mlvos.model.registry import build_model
from mlvos.model.train.clip import ClipModel
from mlvos.model.train.data import first_frame_masks


def test_paper_variant_trainer_smoke(tmp_path):
    out = tmp_path / "paper"
    assert main(["train", "--stage", "main", "--variant", "paper", "--out", str(out),
                 "--size", "64", "--batch", "1", "--max-objects", "1", "--steps", "2",
                 "--lr", "1e-5", "--log-every", "1", "--threads", "2"]) == 0
    state = read_checkpoint(out / "last.pt")
    assert state["variant"] == "paper" and state["iteration"] == 2


@pytest.mark.slow
def test_paper_variant_overfits_one_clip():
    torch.manual_seed(0)
    clip = synth_clip(np.random.default_rng(3), 3, 64, max_skip=2, num_objects=2)
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)[None]
    labels = torch.from_numpy(clip.labels.astype(np.int64))[None]
    k = clip.num_objects
    first, valid = first_frame_masks(labels, torch.tensor([k]), k)
    model = ClipModel(build_model("paper", seed=0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(50):
        logits = model(frames, first, valid)
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
