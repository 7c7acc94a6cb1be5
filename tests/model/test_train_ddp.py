"""Two-process DistributedDataParallel training on CPU (gloo), launched by torchrun."""

import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from mlvos.model.checkpoint import read_checkpoint


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_process_gloo_training(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mlvos.cli", "train", "--stage", "main", "--variant", "tiny",
           "--size", "64", "--batch", "1", "--steps", "3", "--save-every", "2", "--lr", "1e-3",
           "--log-every", "1", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # both ranks trained to the end; only rank 0 wrote
    assert "rank 1/2 finished step 3" in r.stdout
    assert r.stdout.count("wrote ") == 1
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "log.jsonl"]
    train = read_checkpoint(out / "last.pt")["extra"]["train"]
    assert train["world_size"] == 2 and train["step"] == 3
    assert len(train["rng"]) == 2  # every rank's RNG state, for an exact resume
    steps = [line for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == 3  # one log line per step, not one per rank
