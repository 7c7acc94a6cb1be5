"""The training checkpoint (RUN/last.pt) under SIGKILL, a full disk and corruption: the next
`mlvos train --resume` resumes from the last whole checkpoint, or says why it cannot; a damaged
checkpoint is refused by its sha256 seal before torch.load sees it."""

from __future__ import annotations

import pytest

from mlvos.cli import main
from mlvos.errors import CheckpointError
from mlvos.fileio import FAULT_ENV
from mlvos.model.checkpoint import read_checkpoint

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # child processes that import torch, tiny exports

# 3 steps, a checkpoint after each: write points 1, 2 (periodic) and 3 (final).
TRAIN = ["train", "--stage", "main", "--variant", "tiny", "--data", "synth", "--size", "64",
         "--batch", "1", "--steps", "3", "--save-every", "1", "--lr", "1e-3", "--threads", "1"]


def test_kill_during_a_checkpoint_write_resumes_from_the_last_whole_one(tmp_path, capsys, faults):
    out = tmp_path / "run"
    faults.assert_killed(faults.run([*TRAIN, "--out", str(out)], fault="kill:2"), 2, "write",
                  out / "last.pt")
    assert read_checkpoint(out / "last.pt")["iteration"] == 1  # step 2's write never landed
    torn = faults.leftovers(out)
    assert [n.startswith(".last.pt.") for n in torn] == [True]  # step 2's torn temporary

    assert main(["train", "--resume", str(out)]) == 0
    o = capsys.readouterr()
    assert f"resuming {out} at step 1 of 3" in o.out
    assert "removed 1 partial file(s) that an interrupted write left" in o.err
    assert read_checkpoint(out / "last.pt")["extra"]["train"]["step"] == 3
    assert faults.leftovers(out) == []


def test_kill_during_the_first_checkpoint_write_says_to_start_again(tmp_path, capsys, faults):
    out = tmp_path / "run"
    faults.assert_killed(faults.run([*TRAIN, "--out", str(out)], fault="kill:1"), 1, "write",
                  out / "last.pt")
    assert not (out / "last.pt").exists()
    assert main(["train", "--resume", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the run stopped before its first checkpoint: start it again with --force" in err


def test_disk_full_at_a_checkpoint_write(tmp_path, capsys, monkeypatch, faults):
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "enospc:2")
    assert main([*TRAIN, "--out", str(out)]) == 1
    (line,) = faults.error_lines(capsys.readouterr().err)  # one line, no traceback
    assert line.startswith(f"mlvos train: error: no space left on the device for {out}/last.pt (")
    assert "free there now" in line and "free some space or write to another disk" in line
    assert read_checkpoint(out / "last.pt")["iteration"] == 1 and faults.leftovers(out) == []

    monkeypatch.delenv(FAULT_ENV)  # space freed: the run continues where it stopped
    assert main(["train", "--resume", str(out)]) == 0
    assert "at step 1 of 3" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["bit-flip", "truncated"])
def test_corrupted_checkpoint_is_refused_before_torch_load(checkpoint, tmp_path, monkeypatch,
                                                            capsys, damage):
    data = bytearray(checkpoint.read_bytes())
    if damage == "bit-flip":
        data[len(data) // 3] ^= 0x10
    else:
        data = data[: len(data) - 1000]
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(bytes(data))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))

    match = "does not match the sha256 sealed" if damage == "bit-flip" else "truncated"
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(run / "last.pt")
    assert main(["train", "--resume", str(run)]) == 1
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--out",
                 str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(match in line for line in err), err
    assert loads == []  # never deserialized
    assert not (tmp_path / "e").exists()
