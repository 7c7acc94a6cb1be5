"""INT8 calibration under SIGKILL, a full disk, a second calibration and a damaged feed cache.

Write points of a calibration that records its feeds: the cache directory OUT/cache (1), the
export's manifest.json (2), OUT/calibration.json (3), EXPORT/calibration.json (4). Replacing an
int8 registration (--force) writes the manifest twice: without int8 (1), then with the new
graphs (2); the cache is reused then. Whatever is killed, the manifest names only files that
match it, and the next calibration reuses a whole cache or records a new one."""

from __future__ import annotations

import numpy as np
import pytest

from mlvos.calib import cache
from mlvos.calib.record import CalibrationData
from mlvos.cli import main
from mlvos.fileio import FAULT_ENV
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph
from mlvos.runtime.spec import Tensor as T

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # child processes that import torch, tiny exports


@pytest.fixture()
def calib(export_copy, dataset, tmp_path, faults):
    """argv(*extra) -> `mlvos calib` on export_copy with its cache in tmp_path/out."""
    def argv(*extra: str) -> list[str]:
        return ["calib", "--model", str(export_copy), "--data", str(dataset), "--out",
                str(tmp_path / "out"), *faults.CALIB, *extra]

    return argv


def _int8(export) -> list[str]:
    """The graphs registered in int8, after checking that every file the manifest names
    matches it."""
    manifest = Manifest.load(export)
    assert manifest.verify() == []
    return [g for g in Graph.ALL if "int8" in manifest.data["graphs"][g]]


def test_kill_while_writing_the_feed_cache(export_copy, calib, tmp_path, capsys, faults):
    before = faults.snapshot(export_copy)
    faults.assert_killed(faults.run(calib(), fault="kill:1"), 1, "write", tmp_path / "out/cache")
    assert faults.snapshot(export_copy) == before  # nothing staged into the export yet
    assert not (tmp_path / "out/cache").exists()  # only its torn temporary

    assert main(calib()) == 0
    o = capsys.readouterr()
    assert "removed 1 partial file(s) that an interrupted write left" in o.err
    assert "cache: no cache yet; recording" in o.out
    assert _int8(export_copy) == list(Graph.ALL)
    assert faults.leftovers(tmp_path) == []


def test_kill_while_registering_int8(export_copy, calib, tmp_path, capsys, faults):
    """Killed at the manifest write of a first calibration, then of a --force replacement:
    the export keeps its FP32 graphs and no int8 entry; the next run reuses the cache."""
    for force in ((), ("--force",)):
        faults.assert_killed(faults.run(calib(*force), fault="kill:2"), 2, "write",
                             export_copy / "manifest.json")
        assert _int8(export_copy) == []  # torn temporaries and unregistered files aside
        assert main(calib(*force)) == 0
        o = capsys.readouterr()
        assert "cache: reused (4 samples)" in o.out
        assert "removed 1 partial file(s) that an interrupted write left" in o.err
        assert _int8(export_copy) == list(Graph.ALL)
        assert faults.leftovers(tmp_path) == []


def test_disk_full_during_calibration_changes_nothing(export_copy, calib, tmp_path, capsys,
                                                      faults, monkeypatch):
    before = faults.snapshot(export_copy)
    for point, target in ((1, tmp_path / "out/cache"), (2, export_copy / "manifest.json")):
        monkeypatch.setenv(FAULT_ENV, f"enospc:{point}")
        monkeypatch.setattr("mlvos.fileio._fault_count", 0)
        assert main(calib()) == 1
        (line,) = faults.error_lines(capsys.readouterr().err)
        assert line.startswith(f"mlvos calib: error: no space left on the device for {target} (")
        assert faults.snapshot(export_copy) == before  # no int8 file, manifest unchanged
        assert faults.leftovers(tmp_path) == []


def test_two_calibrations_share_a_cache(export_copy, calib, tmp_path, faults):
    """The second waits while the first records into the cache, then reuses it; both
    calibrate the same export, so whichever commits second is refused (no --force): which one
    that is depends on the scheduler once both quantize."""
    first = faults.start(calib(), fault="stall:1")  # holds the cache's lock at its write
    faults.read_until(first.stderr, "mlvos-fault 1 write")
    second = faults.start(calib())
    faults.read_until(second.stdout, f"waiting for pid {first.pid}: ")
    _, err1 = first.communicate("\n")
    out2, err2 = second.communicate()
    assert "cache: reused (4 samples)" in out2
    assert sorted([first.returncode, second.returncode]) == [0, 1], (err1, err2)
    err = err2 if second.returncode else err1
    (line,) = faults.error_lines(err)
    assert line.startswith(f"mlvos calib: error: another calibration registered int8 graphs in "
                           f"{export_copy} while this one ran")
    assert "rerun with --force" in line
    assert _int8(export_copy) == list(Graph.ALL) and faults.leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["bit-flip", "truncated"])
def test_damaged_feed_cache_is_rebuilt_never_read(tmp_path, monkeypatch, damage):
    feeds = {g: [{T.FRAME: np.full((1, 3, 32, 32), i, np.uint8)} for i in range(2)]
             for g in Graph.ALL}
    key = cache.cache_key(fp32_sha256={g: "0" * 64 for g in Graph.ALL}, dataset={"root": "/d"},
                          positions=[("a", 1), ("a", 2)], mem_every=5)
    folder = tmp_path / "cache"
    cache.save(folder, key, CalibrationData([("a", 1), ("a", 2)], feeds))
    npz = folder / f"{Graph.MEMORY_ENCODER}.npz"
    data = bytearray(npz.read_bytes())
    if damage == "bit-flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    npz.write_bytes(bytes(data))

    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda f, **kw: loads.append(str(f)) or real_load(f, **kw))
    recorded = []
    data, reused = cache.load_or_record(
        folder, key, lambda: recorded.append(1) or CalibrationData([("a", 1), ("a", 2)], feeds))
    assert not reused and recorded == [1]
    assert str(npz) not in loads  # checked by its sha256 first, never deserialized
    assert cache.load(folder, key)[1] == "reused"
