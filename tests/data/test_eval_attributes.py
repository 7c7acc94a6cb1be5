"""Per-attribute J&F (natural datasets' natural.json) and the per-frame J distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlvos.data.evaluate import evaluate_folders, find_attributes
from mlvos.palette import write_mask


@pytest.fixture
def folders(tmp_path):
    """Two sequences of 4 frames: object 1 predicted perfectly, object 2 (seq a) missed."""
    gt, pred = tmp_path / "ds" / "Annotations" / "480p", tmp_path / "pred"
    for seq in ("a", "b"):
        for t in range(4):
            lab = np.zeros((20, 30), np.uint8)
            lab[2:8, 2:8] = 1
            if seq == "a":
                lab[10:18, 10:20] = 2
            write_mask(gt / seq / f"{t:05d}.png", lab)
            out = lab.copy()
            if t > 0:
                out[out == 2] = 0
            write_mask(pred / seq / f"{t:05d}.png", out)
    meta = {"attributes": {"a": {"1": [], "2": ["occluded", "small"]}, "b": {"1": ["fast"]}}}
    (tmp_path / "ds" / "natural.json").write_text(json.dumps(meta))
    return gt, pred


def test_by_attribute_groups_objects(folders):
    gt, pred = folders
    result = evaluate_folders(gt, pred)
    table = result.by_attribute(find_attributes(gt))
    assert table["all"]["objects"] == 3
    assert table["occluded"]["objects"] == table["small"]["objects"] == 1
    assert table["occluded"]["J-Mean"] == pytest.approx(0.0)
    assert table["fast"]["J&F-Mean"] == pytest.approx(1.0)
    assert table["none"]["objects"] == 1 and table["none"]["J-Mean"] == pytest.approx(1.0)
    assert "occluded" in result.format_attributes(table)


def test_frame_j_distribution(folders):
    gt, pred = folders
    fj = evaluate_folders(gt, pred).frame_j()
    # 3 objects x 2 evaluated frames (first and last are skipped): 4 perfect, 2 missed
    assert fj["count"] == 6 and fj["min"] == 0.0 and fj["share>=0.99"] == pytest.approx(4 / 6)


def test_no_attributes_file(tmp_path):
    (tmp_path / "Annotations" / "480p").mkdir(parents=True)
    assert find_attributes(tmp_path / "Annotations" / "480p") is None
