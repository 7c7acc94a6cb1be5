"""The runtime-only install works as documented: the wheel with its [ort] extra, in a fresh venv
without torch, runs `mlvos run` on an mp4 and `mlvos eval`. Needs the package index (the extra's
numpy, onnxruntime, pillow, tqdm and OpenCV); skips where pip cannot reach it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _sh(*cmd, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding only the wheel and its [ort] extra."""
    root = tmp_path_factory.mktemp("pkg")
    # Built from a copy: setuptools writes build/ beside the sources it builds.
    src = root / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
    r = _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
            "-w", root / "dist", src)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((root / "dist").glob("mlvos-*.whl"))
    r = _sh(sys.executable, "-m", "venv", root / "venv")
    assert r.returncode == 0, r.stderr
    bin_dir = root / "venv" / "bin"
    r = _sh(bin_dir / "python", "-m", "pip", "install", "-q", f"{wheel}[ort]")
    if r.returncode != 0:
        pytest.skip(f"cannot install the [ort] extra (no package index?): {r.stderr[-300:]}")
    return bin_dir


def test_ort_extra_runs_a_video_and_eval_without_torch(runtime_venv, decisive_tiny, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from mlvos.export import export_checkpoint
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.palette import read_mask, write_mask

    bin_dir = runtime_venv
    r = _sh(bin_dir / "python", "-c", "import torch")
    assert r.returncode != 0, "the [ort] install must not bring torch"
    export = export_checkpoint(save_checkpoint(tmp_path / "t.pt", decisive_tiny()),
                               tmp_path / "export", precisions=("fp32",), validate=False)
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 1
    write_mask(tmp_path / "first.png", mask)
    pred = tmp_path / "pred" / "clip"
    r = _sh(bin_dir / "mlvos", "run", "--model", export, "--input", video, "--mask",
            tmp_path / "first.png", "--out", pred)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    masks = sorted(pred.glob("*.png"))
    assert len(masks) == 5 and read_mask(masks[0]).shape == (64, 96)
    gt = tmp_path / "gt" / "clip"
    shutil.copytree(pred, gt)  # scored against itself: J&F 100, the point is that eval runs
    r = _sh(bin_dir / "mlvos", "eval", "--gt", tmp_path / "gt", "--pred", tmp_path / "pred")
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    clip = next(line for line in r.stdout.splitlines() if line.startswith("clip"))
    assert clip.split()[-1] == "1.000"  # J&F of the sequence
