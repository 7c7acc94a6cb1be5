"""The run record of `mlvos run` output folders: what a rerun finds, says and deletes."""

import json

import pytest

from mlvos.runtime.run_folder import RECORD, RunFolder

FP = {"input": ["v.mp4", 10, 1], "--scale": 1.0}


def _masks(folder, names):
    for name in names:
        (folder / f"{name}.png").write_bytes(b"png")


def _record(folder):
    return json.loads((folder / RECORD).read_text())


def test_a_complete_run_is_recorded(tmp_path):
    out = tmp_path / "out"
    run = RunFolder(out)
    run.begin(FP, ["00000", "00001"])
    assert _record(out) == {"status": "running", "fingerprint": FP,
                            "masks": ["00000", "00001"], "stale": []}
    _masks(out, ["00000", "00001"])
    run.finish()
    assert _record(out)["status"] == "complete"


def test_a_killed_run_is_named_and_replaced(tmp_path, caplog, monkeypatch):
    from mlvos import fileio

    out = tmp_path / "out"
    RunFolder(out).begin(FP, [f"{i:05d}" for i in range(5)])
    _masks(out, ["00000", "00001", "00002"])  # killed after 3 masks ...
    (out / ".00003.png.999999999.abc123.tmp").write_bytes(b"torn")  # ... while writing the 4th
    monkeypatch.setattr(fileio, "_swept", set())  # the rerun is another process
    with caplog.at_level("INFO", logger="mlvos.runtime.run_folder"):
        RunFolder(out).begin(FP, ["00000", "00001"])
    assert "stopped after 3 of 5 frames (killed or crashed) with the same settings; starting " \
           "over from the first frame: the predictor's memory bank" in caplog.text
    # every earlier mask and temporary is gone: what is there now is the new run's
    assert sorted(p.name for p in out.iterdir()) == [RECORD]
    assert _record(out)["masks"] == ["00000", "00001"] and _record(out)["stale"] == []


def test_other_settings_and_failures_are_named(tmp_path, caplog):
    out = tmp_path / "out"
    run = RunFolder(out)
    run.begin(FP, ["a", "b", "c"])
    _masks(out, ["a"])
    run.fail(1, "cannot read frame b.jpg")
    with caplog.at_level("INFO", logger="mlvos.runtime.run_folder"):
        RunFolder(out).begin({**FP, "--scale": 1.5}, ["a", "b", "c"])
    assert "a run that failed after 1 of 3 frames (cannot read frame b.jpg) with other " \
           "settings (changed: --scale); replacing them" in caplog.text
    assert not (out / "a.png").exists()


def test_png_files_without_a_record_are_left_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    _masks(out, ["00000", "mine"])
    RunFolder(out).begin(FP, ["00000", "00001"])
    assert "holds 1 PNG file(s) that this run does not write and no run record" in caplog.text
    assert (out / "mine.png").exists()  # not ours to delete


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_an_unreadable_record_still_owns_the_folder(tmp_path, caplog, text):
    out = tmp_path / "out"
    out.mkdir()
    _masks(out, ["x", "y"])
    (out / RECORD).write_text(text)
    with caplog.at_level("INFO", logger="mlvos.runtime.run_folder"):
        RunFolder(out).begin(FP, ["a"])
    assert "unreadable run record" in caplog.text
    assert not list(out.glob("*.png")) and _record(out)["status"] == "running"
