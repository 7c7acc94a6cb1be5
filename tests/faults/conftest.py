"""Shared helpers of the fault tests.

A writer runs as `mlvos ...` in a child process with MLVOS_FAULT set (mlvos/fileio.py: "kill:N"
SIGKILLs it at its Nth write point, the temporary cut to half first; "enospc:N" fails that write
with ENOSPC; "stall:N" holds it there until a line arrives on stdin), so a kill is a real SIGKILL.
The rerun that must resume or rebuild runs in this process (`mlvos.cli.main`: what the user would
type), which saves a torch import per case. Artifacts are tiny: the `tiny` variant, a 64x96 FP32
export with capacity 4, one 5-frame video.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from mlvos import fileio

FAKE_TRT_CLI = Path(__file__).with_name("fake_trt_cli.py")
HEIGHT, WIDTH = 64, 96
# Calibration as cheap as it gets: 4 samples, onnxruntime's quantizer, no FP32 candidates tried.
CALIB = ["--samples", "4", "--method", "ort", "--keep-fp32", "none", "--threads", "1"]
# What a killed or failed write may leave (hidden temporaries, staged files, locks, a directory
# moved aside); after the next run none of it may remain.
_LEFTOVER = re.compile(r"\..+\.(tmp|lock|old)")


@pytest.fixture(autouse=True)
def _fresh_fault_state(monkeypatch):
    """No fault unless a test sets one; fault points and swept folders counted per test."""
    monkeypatch.delenv(fileio.FAULT_ENV, raising=False)
    monkeypatch.setattr(fileio, "_fault_count", 0)
    monkeypatch.setattr(fileio, "_swept", set())


def _command(args: list[str], trt: bool) -> list[str]:
    if trt:  # `mlvos` with the fake TensorRT of tests/runtime/fake_trt.py installed
        return [sys.executable, str(FAKE_TRT_CLI), *args]
    return [sys.executable, "-m", "mlvos.cli", *args]


def _env(fault: str | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop(fileio.FAULT_ENV, None)
    if fault:
        env[fileio.FAULT_ENV] = fault
    return env


def run_mlvos(args: list[str], *, fault: str | None = None, trt: bool = False,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`mlvos ARGS` in a child process with MLVOS_FAULT=fault; output captured as text."""
    return subprocess.run(_command(args, trt), env=_env(fault), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def start_mlvos(args: list[str], *, fault: str | None = None, trt: bool = False,
                timeout: float = 300) -> subprocess.Popen:
    """`mlvos ARGS` started in the background (stdin, stdout, stderr pipes); killed after
    `timeout` seconds, so a test never hangs on it."""
    proc = subprocess.Popen(_command(args, trt), env=_env(fault), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    return proc


def read_until(stream, text: str) -> list[str]:
    """Lines of `stream` up to and including the first that contains `text`."""
    lines = []
    while line := stream.readline():
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the process ended without printing {text!r}:\n" + "".join(lines))


def assert_killed(result: subprocess.CompletedProcess, point: int, kind: str, target: Path):
    """The child died by SIGKILL at fault point `point`, a `kind` write of `target`."""
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])
    assert f"mlvos-fault {point} {kind} " in result.stderr, result.stderr[-2000:]
    line = next(x for x in result.stderr.splitlines() if x.startswith(f"mlvos-fault {point} "))
    assert line.split(" ", 3)[3].startswith(str(target)), line


def error_lines(err: str) -> list[str]:
    """stderr without the fault hook's own report lines."""
    return [x for x in err.splitlines() if x and not x.startswith("mlvos-fault ")]


def leftovers(*folders: Path) -> list[str]:
    """Names of temporaries, staged files, lock files and moved-aside directories in `folders`
    (recursively)."""
    found = []
    for folder in folders:
        for p in Path(folder).rglob("*"):
            if _LEFTOVER.fullmatch(p.name):
                found.append(str(p.relative_to(folder)))
    return sorted(found)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of `folder` (relative path -> bytes), to show that a failed run changed
    nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="session")
def faults() -> types.SimpleNamespace:
    """The helpers above as one namespace (test files cannot import conftest under
    --import-mode=importlib): run, start, read_until, assert_killed, error_lines, leftovers,
    snapshot, and CALIB (the `mlvos calib` options of the tests)."""
    return types.SimpleNamespace(
        run=run_mlvos, start=start_mlvos, read_until=read_until, assert_killed=assert_killed,
        error_lines=error_lines, leftovers=leftovers, snapshot=snapshot, CALIB=CALIB,
    )


@pytest.fixture()
def fakes(monkeypatch):
    """Fake `tensorrt` 10.3 and `cuda.bindings.runtime` in sys.modules for one test: the
    `fakes` fixture of tests/runtime/conftest.py (fake_trt.py, loaded by path under the same
    module name)."""
    name = "mlvos_tests_fake_trt"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "runtime" / "fake_trt.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: its dataclasses and enums look it up
        spec.loader.exec_module(module)
    return sys.modules[name].install(monkeypatch)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A seeded, untrained `tiny` checkpoint."""
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.registry import build_model

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt",
                           build_model("tiny", seed=0))


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, checkpoint) -> Path:
    """A static 64x96 FP32 export of `checkpoint` (capacity 4, not validated); copy it before
    writing to it (`export_copy`)."""
    import torch

    from mlvos.export.api import export_checkpoint

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a 2-vCPU machine
    try:
        return export_checkpoint(
            checkpoint, tmp_path_factory.mktemp("export") / "export", capacity=4,
            precisions=("fp32",), size=(HEIGHT, WIDTH), validate=False, representative_frames=2,
        )
    finally:
        torch.set_num_threads(before)


@pytest.fixture()
def export_copy(export_dir, tmp_path) -> Path:
    """A private copy of `export_dir` in tmp_path/export."""
    return Path(shutil.copytree(export_dir, tmp_path / "export"))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """One synthetic 5-frame 64x96 video (DAVIS layout, split val)."""
    from mlvos.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", sequences=1,
                                  frames=5, seed=11, max_objects=2, height=HEIGHT, width=WIDTH)
