"""`mlvos data vtest`: the hand-drawn first-frame mask, the cached atomic folder, its errors, and
(slow) the real vtest.avi from the Debian package."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from mlvos.cli import main
from mlvos.data import vtest
from mlvos.data.tracking import largest_component_share
from mlvos.errors import DatasetError, InputError
from mlvos.palette import encode_mask, read_mask

FAKE_VIDEO = b"RIFF fake vtest.avi bytes"


def test_first_mask_is_deterministic_with_three_plausible_objects():
    mask = vtest.first_mask()
    assert mask.shape == (vtest.HEIGHT, vtest.WIDTH) and mask.dtype == np.uint8
    assert np.array_equal(mask, vtest.first_mask())
    assert encode_mask(mask) == encode_mask(vtest.first_mask())
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}
    objects = vtest.describe_objects(mask)
    people = [objects["1"]["area"], objects["2"]["area"]]
    # ~30x90 px people cover about half their box; the centre one is further from the camera
    assert all(1000 <= area <= 4000 for area in people), people
    assert objects["3"]["area"] > max(people)
    for obj in vtest.OBJECTS:
        assert all(0 <= x < vtest.WIDTH and 0 <= y < vtest.HEIGHT for x, y in obj.polygon)
        assert largest_component_share(mask == obj.id) == 1.0  # each outline is one piece
    # the boxes of the brief (frame 0): left person x 255-282 y 218-308, centre x 500-530
    # y 155-233, the van top right
    x0, y0, x1, y1 = objects["1"]["bbox"]
    assert 250 <= x0 and x1 <= 287 and 215 <= y0 and y1 <= 310
    x0, y0, x1, y1 = objects["2"]["bbox"]
    assert 495 <= x0 and x1 <= 535 and 150 <= y0 and y1 <= 238
    x0, y0, x1, y1 = objects["3"]["bbox"]
    assert x0 > 600 and y1 < 120


@pytest.fixture
def fake_source(monkeypatch):
    """Downloads replaced by FAKE_VIDEO (whose sha256 becomes the expected one); counts calls."""
    calls = []

    def fetch():
        calls.append(1)
        return FAKE_VIDEO, {"package": vtest.PACKAGE, "version": vtest.PACKAGE_VERSION,
                            "deb_sha256": "0" * 64, "member": vtest.MEMBER}

    monkeypatch.setattr(vtest, "_fetch_video", fetch)
    monkeypatch.setattr(vtest, "VIDEO_SHA256", hashlib.sha256(FAKE_VIDEO).hexdigest())
    return calls


def test_folder_is_written_then_reused(tmp_path, fake_source):
    out = tmp_path / "vt"
    made = vtest.make_vtest(out)
    assert not made.reused and fake_source == [1]
    assert (out / "vtest.avi").read_bytes() == FAKE_VIDEO
    assert np.array_equal(read_mask(out / "00000.png"), vtest.first_mask())
    meta = json.loads((out / "vtest.json").read_text())
    assert meta["source"]["package"] == "opencv-doc"
    assert meta["video"]["sha256"] == hashlib.sha256(FAKE_VIDEO).hexdigest()
    assert set(meta["objects"]) == {"1", "2", "3"} and len(meta["objects"]["3"]["bbox"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vt"]  # no temporary left over

    again = vtest.make_vtest(out)
    assert again.reused and fake_source == [1]  # cached: nothing fetched

    (out / "00000.png").write_bytes(encode_mask(np.zeros((4, 4), np.uint8)))  # stale mask
    rebuilt = vtest.make_vtest(out)
    assert not rebuilt.reused and fake_source == [1]  # the intact video is reused
    assert np.array_equal(read_mask(out / "00000.png"), vtest.first_mask())

    vtest.make_vtest(out, force=True)
    assert fake_source == [1, 1]


def test_cli_uses_a_local_video_and_refuses_foreign_folders(tmp_path, fake_source, capsys):
    local = tmp_path / "mine.avi"
    local.write_bytes(FAKE_VIDEO)
    out = tmp_path / "vt"
    assert main(["data", "vtest", "--out", str(out), "--video", str(local)]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "object 3: van" in text and fake_source == []
    assert main(["data", "vtest", "--out", str(out)]) == 0
    assert "reused" in capsys.readouterr().out

    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not a `mlvos data vtest` folder; pass --force"):
        vtest.make_vtest(foreign)
    assert (foreign / "keep.txt").exists()


def test_another_video_is_refused_and_nothing_is_written(tmp_path, fake_source):
    local = tmp_path / "other.avi"
    local.write_bytes(b"another video")
    with pytest.raises(DatasetError, match="polygons are drawn for that exact file"):
        vtest.make_vtest(tmp_path / "vt", video=local)
    assert not (tmp_path / "vt").exists()


def test_missing_apt_get_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(vtest.shutil, "which", lambda name: None)
    with pytest.raises(DatasetError, match="apt-get is not available.*--video PATH"):
        vtest.make_vtest(tmp_path / "vt")
    assert not (tmp_path / "vt").exists()


@pytest.mark.slow
def test_real_vtest_decodes_and_matches_the_generator(tmp_path):
    """Downloads opencv-doc (~8 MB .deb) with apt-get: needs a Debian mirror."""
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not available (not a Debian/Ubuntu system)")
    cv2 = pytest.importorskip("cv2")
    out = tmp_path / "vt"
    assert main(["data", "vtest", "--out", str(out)]) == 0
    assert (out / "00000.png").read_bytes() == encode_mask(vtest.first_mask())
    meta = json.loads((out / "vtest.json").read_text())
    assert meta["video"]["sha256"] == vtest.VIDEO_SHA256
    assert meta["source"]["version"] == vtest.PACKAGE_VERSION
    cap = cv2.VideoCapture(str(out / "vtest.avi"))
    shapes, n = set(), 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        shapes.add(frame.shape)
        n += 1
    cap.release()
    assert n == vtest.NUM_FRAMES == 795
    assert shapes == {(576, 768, 3)}
