"""Palette PNG I/O: round trip, grayscale ids accepted, colour masks rejected, bad files named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlvos.errors import DatasetError, InputError
from mlvos.palette import (
    binary_to_ids,
    colorize,
    davis_palette,
    read_frame,
    read_mask,
    write_frame,
    write_mask,
)


def test_davis_palette_matches_voc_colormap():
    pal = davis_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                [0, 0, 128], [128, 0, 128]]
    assert pal[255].tolist() == [224, 224, 192]  # VOC 'void' colour


def test_mask_round_trip_is_palette_png(tmp_path):
    ids = np.random.default_rng(0).integers(0, 8, size=(17, 23)).astype(np.uint8)
    path = tmp_path / "m.png"
    write_mask(path, ids)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert img.getpalette()[3:6] == [128, 0, 0]
    back = read_mask(path)
    assert back.dtype == np.uint8 and back.shape == (17, 23)
    np.testing.assert_array_equal(back, ids)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temp file left behind


def test_grayscale_mask_values_are_ids(tmp_path):
    ids = np.array([[0, 1, 2], [3, 0, 255]], dtype=np.uint8)
    Image.fromarray(ids).save(tmp_path / "gray.png")  # mode 'L'
    np.testing.assert_array_equal(read_mask(tmp_path / "gray.png"), ids)
    np.testing.assert_array_equal(binary_to_ids(np.array([[0, 255]], np.uint8)), [[0, 1]])
    np.testing.assert_array_equal(binary_to_ids(ids), ids)  # not binary: unchanged


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_mask_rejected_naming_file(tmp_path, mode):
    path = tmp_path / f"colour_{mode}.png"
    Image.new(mode, (8, 6)).save(path)
    with pytest.raises(DatasetError, match=f"colour_{mode}.png.*convert to palette"):
        read_mask(path)


def test_unreadable_and_missing_files_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="broken.png"):
        read_mask(bad)
    with pytest.raises(DatasetError, match="broken.png"):
        read_frame(bad)
    with pytest.raises(DatasetError, match="absent.jpg"):
        read_frame(tmp_path / "absent.jpg")


def test_write_mask_rejects_bad_arrays(tmp_path):
    with pytest.raises(InputError, match="shape"):
        write_mask(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="0..255"):
        write_mask(tmp_path / "a.png", np.full((4, 4), 300, np.int32))
    with pytest.raises(InputError, match="integer"):
        write_mask(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    write_mask(tmp_path / "ok.png", np.ones((4, 4), np.int64))  # integer ids are cast
    assert read_mask(tmp_path / "ok.png").max() == 1


def test_frame_io(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    write_frame(tmp_path / "f.png", rgb)
    np.testing.assert_array_equal(read_frame(tmp_path / "f.png"), rgb)  # PNG is lossless
    write_frame(tmp_path / "f.jpg", rgb)
    assert np.abs(read_frame(tmp_path / "f.jpg").astype(int) - rgb).max() < 8
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(tmp_path / "g.png")
    assert read_frame(tmp_path / "g.png").shape == (5, 7, 3)  # grayscale replicated
    assert colorize(np.array([[1]], np.uint8)).tolist() == [[[128, 0, 0]]]
