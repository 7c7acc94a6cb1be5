"""The export directory under SIGKILL, a full disk and a second writer: the directory is the old
export, the new one or (killed between the two renames of a replacement) absent until the next
export restores it; never a mix. A static 64x96 FP32 export without validation has three write
points when it replaces a directory: manifest.json inside the temporary directory (1), the whole
directory (2), between moving the old one aside and the new one in (3)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlvos.cli import main
from mlvos.errors import DiskFullError
from mlvos.fileio import FAULT_ENV
from mlvos.runtime.errors import ManifestError
from mlvos.runtime.manifest import Manifest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # child processes that import torch, tiny exports


def _export(checkpoint, out):
    return ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--precision", "fp32",
            "--capacity", "4", "--height", "64", "--width", "96", "--no-validate", "--force"]


def _complete(out) -> bool:
    manifest = Manifest.load(out)
    return manifest.verify() == [] and manifest.precisions == ["fp32"]


@pytest.mark.parametrize("point, kind", [(2, "write"), (3, "rename")])
def test_kill_while_replacing_an_export_then_export_again(checkpoint, export_copy, capsys,
                                                          faults, point, kind):
    before = faults.snapshot(export_copy)
    result = faults.run(_export(checkpoint, export_copy), fault=f"kill:{point}")
    faults.assert_killed(result, point, kind, export_copy)
    if kind == "write":  # the new directory was still a temporary: the old export is whole
        assert faults.snapshot(export_copy) == before
    else:  # the old one moved aside, the new one not yet in: no export until the next writer
        with pytest.raises(ManifestError, match="not an export directory"):
            Manifest.load(export_copy)

    assert main(_export(checkpoint, export_copy)) == 0
    err = capsys.readouterr().err
    if kind == "write":
        assert "removed 1 partial file(s) that an interrupted write left" in err
    else:
        assert f"restored the previous {export_copy}" in err
    assert _complete(export_copy)
    assert faults.leftovers(export_copy.parent) == []


def test_disk_full_during_an_export_changes_nothing(checkpoint, export_copy, capsys, faults,
                                                    monkeypatch):
    """ENOSPC at write point 1 of an export replacing a directory, and at point 2 of a new one."""
    from mlvos.export.api import export_checkpoint

    before = faults.snapshot(export_copy)
    monkeypatch.setenv(FAULT_ENV, "enospc:1")
    assert main(_export(checkpoint, export_copy)) == 1
    (line,) = faults.error_lines(capsys.readouterr().err)
    assert line.startswith(f"mlvos export: error: no space left on the device for {export_copy} (")
    assert "free there now" in line and "free some space or write to another disk" in line

    new = export_copy.with_name("new")
    monkeypatch.setenv(FAULT_ENV, "enospc:2")
    monkeypatch.setattr("mlvos.fileio._fault_count", 0)
    with pytest.raises(DiskFullError, match=f"no space left on the device for {new} "):
        export_checkpoint(checkpoint, new, capacity=4, precisions=("fp32",), size=(64, 96),
                          validate=False, representative_frames=2)
    assert faults.snapshot(export_copy) == before and not new.exists()
    assert faults.leftovers(export_copy.parent) == []


def test_real_disk_full_on_a_small_filesystem(checkpoint, tmp_path, faults):
    """The same, with a real ENOSPC: a 2 MiB tmpfs mounted in a private mount namespace (where
    `unshare` may do it) takes neither a checkpoint (6 MB; torch raises RuntimeError without an
    errno) nor an export."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=2m none {mnt}"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {probe.stderr.decode().strip()}")
    cmds = {
        "model": f"mlvos model init --variant tiny --out {mnt}/tiny.pt",
        "export": " ".join(["mlvos", *_export(checkpoint, mnt / "export")]),
    }
    script = f"mount -t tmpfs -o size=2m none {mnt} && " + " ; ".join(
        f"{cmd} 2>&1 >/dev/null | sed 's/^/{name}: /'; ls -A {mnt} | sed 's/^/{name} left: /'"
        for name, cmd in cmds.items())
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                         env=env, timeout=300).stdout.splitlines()
    for name, target in (("model", "tiny.pt"), ("export", "export")):
        lines = [x for x in out if x.startswith(f"{name}")]
        assert len(lines) == 1, out  # one error line, nothing left in the filesystem
        assert f"no space left on the device for {mnt}/{target} (" in lines[0], lines[0]
        assert "free there now" in lines[0]


def test_two_exports_to_one_out(checkpoint, export_copy, faults):
    """A second export while the first holds the directory's lock fails at once, naming the
    first one's pid; the first completes."""
    first = faults.start(_export(checkpoint, export_copy), fault="stall:2")
    faults.read_until(first.stderr, "mlvos-fault 2 write")  # the whole directory is written
    second = faults.run(_export(checkpoint, export_copy))
    (line,) = faults.error_lines(second.stderr)
    assert second.returncode == 1 and line.startswith(
        f"mlvos export: error: {export_copy} is being written by another process (pid "
        f"{first.pid}: ")
    _, err = first.communicate("\n")  # let the first one finish
    assert first.returncode == 0, err
    assert _complete(export_copy) and faults.leftovers(export_copy.parent) == []
