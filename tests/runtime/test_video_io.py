"""The overlay drawing shared by `mlvos run --overlay` and `--contact-sheet`, and the sheet."""

import numpy as np
import pytest

from mlvos.runtime.video_io import ContactSheet, draw_overlay

PALETTE = np.zeros((256, 3), np.uint8)
PALETTE[1] = (200, 0, 0)
PALETTE[2] = (0, 100, 0)


def test_overlay_blends_objects_and_outlines_them():
    frame = np.full((10, 12, 3), 100, np.uint8)
    labels = np.zeros((10, 12), np.uint8)
    labels[2:8, 2:6] = 1
    labels[2:8, 6:10] = 2
    out = draw_overlay(frame, labels, PALETTE)
    assert np.array_equal(out[labels == 0], frame[labels == 0])  # background untouched
    assert tuple(out[4, 3]) == (150, 50, 50)  # inside: 50 % frame, 50 % colour
    # outlines: the object's colour lifted halfway to white, on both sides of every change
    assert tuple(out[2, 3]) == (227, 127, 127) and tuple(out[4, 2]) == (227, 127, 127)
    assert tuple(out[4, 5]) == (227, 127, 127) and tuple(out[4, 6]) == (127, 177, 127)


def test_contact_sheet_is_at_most_1600_px_wide(tmp_path):
    from PIL import Image

    sheet = ContactSheet(tmp_path / "s.jpg", [0, 10, 20, 30, 40])
    image = np.full((700, 1000, 3), 90, np.uint8)
    for i in range(41):
        if sheet.wants(i):
            sheet.add(i, image)
    assert sheet.missing == [] and not sheet.wants(10)
    sheet.save()
    w, h = Image.open(tmp_path / "s.jpg").size
    assert w <= 1600 and (w, h) == (3 * 530 + 2 * 4, 2 * 371 + 4)


def test_contact_sheet_errors(tmp_path):
    from mlvos.errors import InputError

    with pytest.raises(InputError, match="unsupported suffix '.gif'"):
        ContactSheet(tmp_path / "s.gif", [0])
    sheet = ContactSheet(tmp_path / "s.png", [5])
    assert sheet.missing == [5]
    with pytest.raises(InputError, match="none of the contact sheet frames"):
        sheet.save()


def test_frames_are_counted_by_decoding_not_by_the_header(tmp_path, monkeypatch, caplog):
    """A container that misreports its frame count (variable frame rate, damaged index) loses no
    frame: the count comes from the stream, and the mismatch is reported."""
    cv2 = pytest.importorskip("cv2")
    from mlvos.runtime import video_io

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(7):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()

    class LyingCapture:  # reports 3 frames for a 7-frame stream
        def __init__(self, name):
            self.cap = cv2.VideoCapture(name)

        def get(self, prop):
            return 3 if prop == cv2.CAP_PROP_FRAME_COUNT else self.cap.get(prop)

        def __getattr__(self, name):
            return getattr(self.cap, name)

    shim = type("cv2shim", (), {})()
    for name in dir(cv2):
        if not name.startswith("__"):
            setattr(shim, name, getattr(cv2, name))
    shim.VideoCapture = LyingCapture
    monkeypatch.setattr(video_io, "require", lambda module, *a: shim if module == "cv2"
                        else __import__(module))
    with caplog.at_level("WARNING", logger="mlvos.runtime.video_io"):
        source = video_io.FrameSource(path)
    assert len(source) == 7 and len(list(source)) == 7
    assert "reports 3 frames, the stream holds 7" in caplog.text
