"""Label-free tracking statistics on hand-made masks: growth, splits, empty frames, errors."""

from __future__ import annotations

import numpy as np
import pytest

from mlvos.data.tracking import largest_component_share, tracking_stats
from mlvos.errors import DatasetError
from mlvos.palette import write_mask

H, W = 40, 60


def _square(mask, obj, y, x, side):
    mask[y:y + side, x:x + side] = obj
    return mask


def _write(folder, masks):
    for t, mask in enumerate(masks):
        write_mask(folder / f"{t:05d}.png", mask)


@pytest.fixture
def first(tmp_path):
    """Object 1: a 10x10 square (100 px); object 2: a 6x6 square (36 px)."""
    mask = _square(_square(np.zeros((H, W), np.uint8), 1, 2, 2, 10), 2, 25, 40, 6)
    path = tmp_path / "first.png"
    write_mask(path, mask)
    return mask, path


def test_a_growing_object_fails_the_area_check(tmp_path, first):
    mask, path = first
    frames = [mask]
    for side in (11, 14, 16):  # 121, 196, 256 px: 2.56x the first frame at frame 3
        frames.append(_square(_square(np.zeros((H, W), np.uint8), 1, 2, 2, side), 2, 25, 40, 6))
    _write(tmp_path / "pred", frames)
    report = tracking_stats(tmp_path / "pred", path)
    grow, steady = report.objects
    assert (grow.id, grow.first_area, grow.max_area) == (1, 100, 256)
    assert grow.max_area_ratio == pytest.approx(2.56) and grow.max_area_frame == "00003"
    assert not grow.area_ok and grow.connected_ok
    assert steady.area_ok and steady.connected_ok and steady.max_area_ratio == 1.0
    assert not report.passed
    table = report.format_table()
    assert "FAIL for object(s) 1" in table and "2.56x @ 00003" in table


def test_a_split_object_fails_the_component_check(tmp_path, first):
    mask, path = first
    split = np.zeros((H, W), np.uint8)
    split[2:12, 2:7] = 1
    split[2:12, 30:35] = 1  # two halves of 50 px: the largest holds 50 %
    speck = _square(mask.copy(), 1, 30, 2, 2)  # 100 + 4 px: the largest holds 96 %
    diagonal = np.zeros((H, W), np.uint8)
    diagonal[2:12, 2:12] = 1
    diagonal[12:22, 12:22] = 1  # touching at a corner: one 8-connected component
    _write(tmp_path / "pred", [mask, split, speck, diagonal, split])
    obj = tracking_stats(tmp_path / "pred", path).objects[0]
    assert obj.present_frames == 5 and obj.connected_frames == 3
    assert obj.connected_share == pytest.approx(0.6) and not obj.connected_ok
    assert obj.area_ok  # 200 px = 2.0x is allowed: the check is "never exceeds 2x"


def test_empty_frames_are_counted(tmp_path, first):
    mask, path = first
    only_2 = mask * (mask == 2)
    empty = np.zeros((H, W), np.uint8)
    _write(tmp_path / "pred", [mask, only_2, mask, only_2, empty])
    one, two = tracking_stats(tmp_path / "pred", path).objects
    assert (one.frames, one.present_frames, one.present_share) == (5, 2, 0.4)
    assert one.last_present_frame == "00002" and one.connected_share == 1.0 and one.connected_ok
    assert (two.present_frames, two.last_present_frame) == (4, "00003")

    _write(tmp_path / "gone", [only_2, empty])
    lost = tracking_stats(tmp_path / "gone", path).objects[0]
    assert lost.present_frames == 0 and lost.last_present_frame is None
    assert lost.connected_share is None and not lost.connected_ok and lost.max_area == 0
    assert lost.to_dict()["connected_ok"] is False


def test_largest_component_share():
    binary = np.zeros((5, 9), bool)
    binary[0:2, 0:2] = True
    binary[4, 8] = True
    assert largest_component_share(binary) == pytest.approx(0.8)


def test_bad_inputs_name_the_problem(tmp_path, first):
    mask, path = first
    with pytest.raises(DatasetError, match="does not exist"):
        tracking_stats(tmp_path / "nope", path)
    (tmp_path / "seqs" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no PNG masks.*pass one sequence's folder"):
        tracking_stats(tmp_path / "seqs", path)
    write_mask(tmp_path / "small" / "00000.png", np.zeros((20, 30), np.uint8))
    with pytest.raises(DatasetError, match="is 20x30, the first-frame mask 40x60"):
        tracking_stats(tmp_path / "small", path)
    write_mask(tmp_path / "blank.png", np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetError, match="holds no object"):
        tracking_stats(tmp_path / "small", tmp_path / "blank.png")
