"""The overlay video (H.264 through PyAV, written atomically) and FrameSource's range reading."""

import struct
import sys
from fractions import Fraction

import numpy as np
import pytest

from mlvos.errors import InputError, MissingDependencyError
from mlvos.runtime.video_io import FrameSource, OverlayWriter

av = pytest.importorskip("av")


def _frames(n, h=48, w=64):
    return [np.full((h, w, 3), 20 * i, np.uint8) for i in range(n)]


def test_overlay_is_h264_that_browsers_play(tmp_path):
    path = tmp_path / "out" / "overlay.mp4"
    writer = OverlayWriter(path, fps=30000 / 1001)
    for image in _frames(7, 47, 63):  # odd sides: padded to even ones (yuv420p)
        writer.write_image(image)
    assert not path.exists()  # nothing at the final path before close
    writer.close()
    assert [p.name for p in path.parent.iterdir()] == ["overlay.mp4"]  # no temporary left
    head = path.read_bytes()[:4096]
    assert head[4:8] == b"ftyp" and b"moov" in head  # +faststart: the index comes first
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (64, 48)
        assert stream.average_rate == Fraction(30000, 1001)  # NTSC kept exact
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 7
    assert abs(int(decoded[3][10, 10, 0]) - 60) <= 3  # the frames, in order


def test_overlay_discarded_on_failure_and_bad_suffix(tmp_path):
    writer = OverlayWriter(tmp_path / "o.mkv")
    writer.write_image(_frames(1)[0])
    writer.close(ok=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"unsupported suffix '\.avi', expected one of \.mp4"):
        OverlayWriter(tmp_path / "o.avi")


def test_missing_pyav_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'mlvos\[ort\]'"):
        OverlayWriter(tmp_path / "o.mp4")


def test_read_a_range_of_a_folder_and_a_video(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from mlvos.palette import write_frame

    for i, frame in enumerate(_frames(5)):
        write_frame(tmp_path / "frames" / f"f{i}.png", frame)
    folder = FrameSource(tmp_path / "frames")
    assert [(n, int(f[0, 0, 0])) for n, f in folder.read(1, 2)] == [("f1", 20), ("f2", 40)]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for frame in _frames(5):
        writer.write(frame)
    writer.release()
    source = FrameSource(video)
    got = [(n, round(f[0, 0, 0] / 20)) for n, f in source.read(3)]
    assert got == [("00003", 3), ("00004", 4)]


def test_a_container_that_reports_too_few_frames_loses_none(tmp_path, caplog):
    """A real AVI whose header says 3 frames for a stream of 9 (the avih and strh counts
    patched): all 9 are read, and the mismatch is reported."""
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for frame in _frames(9):
        writer.write(frame)
    writer.release()
    _patch_avi_count(video, 3)
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT) == 3
    with caplog.at_level("WARNING", logger="mlvos.runtime.video_io"):
        source = FrameSource(video)
    assert len(source) == 9 and len(list(source.read())) == 9
    assert "reports 3 frames, the stream holds 9" in caplog.text


def test_an_undecodable_video_is_one_clear_error(tmp_path):
    from mlvos.errors import DatasetError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(DatasetError, match="cannot open video .*bad.mp4: not a video"):
        FrameSource(bad)


def _patch_avi_count(path, frames):
    """Overwrite an AVI's frame counts: the main header's dwTotalFrames (byte 48) and the video
    stream header's dwLength (32 bytes into the 'strh' chunk's data)."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"RIFF" and data[8:12] == b"AVI "
    data[48:52] = struct.pack("<I", frames)
    strh = data.find(b"strh") + 8
    data[strh + 32:strh + 36] = struct.pack("<I", frames)
    path.write_bytes(bytes(data))
