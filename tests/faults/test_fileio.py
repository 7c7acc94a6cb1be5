"""The mechanisms the writers share (mlvos/fileio.py): the advisory lock between processes, the
removal of what a killed write left, the one-line disk-full error and the fault switch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mlvos import fileio
from mlvos.errors import BusyError, DiskFullError, InputError

HOLD = ("import sys; from mlvos.fileio import file_lock\n"
        "with file_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()")


def _holder(target):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_lock_names_its_holder_and_is_released_when_the_holder_is_killed(tmp_path):
    target = tmp_path / "artifact"
    holder = _holder(target)
    try:
        with pytest.raises(BusyError, match=rf"^{target} is being written by another process "
                                            rf"\(pid {holder.pid}: -c {target}\); wait for it"):
            with fileio.file_lock(target):
                pass
        start = time.monotonic()
        with pytest.raises(BusyError, match=r"\) for 0.3 s; wait"):
            with fileio.file_lock(target, timeout=0.3):
                pass
        assert time.monotonic() - start >= 0.3
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops its lock with it
        holder.wait()
    assert fileio.lock_path(target).exists()  # a killed holder cannot remove its lock file
    with fileio.file_lock(target, timeout=5), fileio.file_lock(target):  # re-entrant
        pass
    assert not fileio.lock_path(target).exists()


def test_a_waiting_writer_gets_the_lock_when_the_holder_finishes(tmp_path, caplog):
    target = tmp_path / "artifact"
    holder = _holder(target)
    caplog.set_level("INFO", logger="mlvos")
    try:
        import threading

        threading.Timer(0.5, holder.stdin.close).start()  # the holder reads EOF, then exits
        with fileio.file_lock(target, timeout=30, what="the artifact"):
            assert holder.wait(timeout=5) == 0
    finally:
        holder.kill()
    assert f"waiting for pid {holder.pid}: -c {target}, which is writing the artifact" in \
        caplog.text


def test_sweep_removes_only_what_dead_writers_left(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    names = [f".a.{dead}.x1y2.tmp", f".b.pt.{os.getpid()}.z3.tmp", ".c.123abc.tmp", "d.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / f".e.{dead}.q.tmp").mkdir()
    removed = fileio.sweep_stale(tmp_path)
    assert sorted(p.name for p in removed) == [f".a.{dead}.x1y2.tmp", f".e.{dead}.q.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(fileio.FAULT_ENV, "enospc:1")
    with pytest.raises(DiskFullError) as info:
        fileio.atomic_write_text(tmp_path / "a.json", "{}")
    message = str(info.value)
    assert "\n" not in message and info.value.errno == 28 and isinstance(info.value, OSError)
    assert message.startswith(f"no space left on the device for {tmp_path / 'a.json'} (")
    assert list(tmp_path.iterdir()) == []


def test_a_library_error_on_a_full_filesystem_is_disk_full(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError without an errno."""
    monkeypatch.setattr(fileio, "_free_bytes", lambda folder: 4096)
    with pytest.raises(DiskFullError, match=r"\(4.0 KiB free there now; RuntimeError: file "
                                            r"write failed\)"):
        with fileio.atomic_path(tmp_path / "x.pt"):
            raise RuntimeError("file write failed")
    with pytest.raises(InputError):  # an mlvos error is never taken for a full disk
        with fileio.atomic_path(tmp_path / "x.pt"):
            raise InputError("bad")


def test_fault_switch_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(fileio.FAULT_ENV, "kill:0")
    with pytest.raises(InputError, match="MLVOS_FAULT='kill:0' is not a fault: use kill:N"):
        fileio.atomic_write_text(tmp_path / "a", "x")
