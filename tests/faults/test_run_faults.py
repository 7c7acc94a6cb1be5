"""`mlvos run` (the mask folder and its run record) under SIGKILL and a full disk: the rerun into
the same --out says what it found and that it starts over, never reads a torn file, and ends with
exactly the masks of an uninterrupted run.

Fault points of a run into a fresh folder (MLVOS_FAULT, conftest.py): 1 = the "running" record,
2..FRAMES+1 = the masks in frame order, FRAMES+2 = the "complete" record.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from mlvos.cli import main  # noqa: E402
from mlvos.palette import read_mask, write_mask  # noqa: E402
from mlvos.runtime.run_folder import RECORD  # noqa: E402

FRAMES = 60


@pytest.fixture(scope="module")
def clip(tmp_path_factory, export_dir):
    """(video, first mask, masks folder of an uninterrupted run): a 64x96 MJPG AVI."""
    from mlvos.data.synth import synth_sequence

    root = tmp_path_factory.mktemp("clip")
    seq = list(synth_sequence(5, FRAMES, 64, 96, num_objects=2))
    video = root / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 64))
    for frame, _ in seq:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    write_mask(root / "first.png", seq[0][1])
    clean = root / "clean"
    assert main(_args(export_dir, video, root / "first.png", clean)) == 0
    return video, root / "first.png", clean


def _args(export_dir, video, mask, out):
    return ["run", "--model", str(export_dir), "--input", str(video), "--mask", str(mask),
            "--out", str(out), "--threads", "1"]


def _rerun_equals_clean(args, out, clean, capsys) -> str:
    """Rerun in this process; its masks are the uninterrupted run's. Returns its stdout."""
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert json.loads((out / RECORD).read_text())["status"] == "complete"
    expected = sorted(p.name for p in clean.glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == expected
    for name in expected:
        assert np.array_equal(read_mask(out / name), read_mask(clean / name)), name
    return text


@pytest.mark.parametrize("kill_after", [1, 37])
def test_sigkill_from_outside_mid_video(export_dir, clip, tmp_path, capsys, faults, kill_after):
    """A plain SIGKILL from another process once `kill_after` masks exist (wherever the run is
    then: encoding, writing a mask, ...)."""
    video, mask, clean = clip
    out = tmp_path / "masks"
    args = _args(export_dir, video, mask, out)
    proc = subprocess.Popen([sys.executable, "-m", "mlvos.cli", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and len(list(out.glob("*.png"))) >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err[-500:]}"
    assert json.loads((out / RECORD).read_text())["status"] == "running"
    done = len(list(out.glob("*.png")))
    assert kill_after <= done < FRAMES
    text = _rerun_equals_clean(args, out, clean, capsys)
    assert f"a run that stopped after {done} of {FRAMES} frames (killed or crashed) with the " \
           "same settings; starting over from the first frame" in text
    assert faults.leftovers(out, tmp_path) == []


@pytest.mark.parametrize("point", [1, 2, 31, FRAMES + 2])
def test_sigkill_in_the_middle_of_a_write(export_dir, clip, tmp_path, capsys, faults, point):
    """Killed with a half-written temporary: of the running record (1), of the first mask (2),
    of a mask mid-video (31), of the complete record (FRAMES + 2)."""
    video, mask, clean = clip
    out = tmp_path / "masks"
    args = _args(export_dir, video, mask, out)
    target = out / (RECORD if point in (1, FRAMES + 2) else f"{point - 2:05d}.png")
    faults.assert_killed(faults.run(args, fault=f"kill:{point}"), point, "write", target)
    assert faults.leftovers(out)  # the torn temporary
    text = _rerun_equals_clean(args, out, clean, capsys)
    if point == 1:  # no record yet: a fresh folder, nothing to say
        assert "holds" not in text
    else:
        assert f"a run that stopped after {point - 2} of {FRAMES} frames" in text
    assert faults.leftovers(out, tmp_path) == []


def test_disk_full_at_a_mask_is_one_error_then_a_clean_rerun(export_dir, clip, tmp_path,
                                                           capsys, faults):
    video, mask, clean = clip
    out = tmp_path / "masks"
    args = _args(export_dir, video, mask, out)
    r = faults.run(args, fault="enospc:12")  # the 11th mask, 00010.png
    assert r.returncode == 1
    lines = faults.error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("mlvos run: error: no space left on the "
                                                   f"device for {out / '00010.png'} "), lines
    record = json.loads((out / RECORD).read_text())
    assert record["status"] == "failed" and record["done"] == 10
    assert sorted(p.stem for p in out.glob("*.png")) == [f"{i:05d}" for i in range(10)]
    assert faults.leftovers(out) == []
    text = _rerun_equals_clean(args, out, clean, capsys)
    assert "a run that failed after 10 of 60 frames (no space left on the device" in text
