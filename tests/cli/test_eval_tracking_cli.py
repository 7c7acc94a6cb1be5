"""`mlvos eval --pred DIR --first-mask PNG`: the label-free tracking table, JSON and arg errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlvos.cli import main
from mlvos.palette import write_mask


@pytest.fixture
def run(tmp_path):
    """A first mask with objects 1 (kept) and 2 (grows 3x), and a 3-frame prediction folder."""
    first = np.zeros((30, 40), np.uint8)
    first[2:8, 2:8] = 1
    first[20:25, 30:35] = 2
    grown = first.copy()
    grown[15:30, 25:40] = 2
    grown[2:8, 2:8] = 1
    for t, mask in enumerate([first, first, grown]):
        write_mask(tmp_path / "masks" / f"{t:05d}.png", mask)
    write_mask(tmp_path / "first.png", first)
    return tmp_path / "masks", tmp_path / "first.png"


def test_eval_without_gt_prints_pass_fail_and_writes_json(run, tmp_path, capsys):
    pred, first = run
    out = tmp_path / "track.json"
    assert main(["eval", "--pred", str(pred), "--first-mask", str(first), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:6].strip()
            in ("1", "2")}
    assert rows["1"][-2:] == ["PASS", "PASS"] and rows["2"][-2:] == ["FAIL", "PASS"]
    assert "FAIL for object(s) 2" in text and f"wrote {out}" in text
    report = json.loads(out.read_text())
    assert report["frames"] == 3 and report["passed"] is False
    two = report["objects"][1]
    assert two["id"] == 2 and two["max_area_ratio"] == pytest.approx(225 / 25)
    assert two["area_ok"] is False and two["max_area_frame"] == "00002"
    assert report["thresholds"]["max_area_ratio"] == 2.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gt", "GT", "--first-mask", "FIRST"], "exactly one of --gt DIR .* received both"),
        ([], "exactly one of --gt DIR .* received neither"),
        (["--first-mask", "FIRST", "--csv", "x.csv"], "--csv apply to J&F with --gt only"),
    ],
)
def test_eval_needs_exactly_one_of_gt_and_first_mask(run, tmp_path, capsys, extra, message):
    import re

    pred, first = run
    argv = ["eval", "--pred", str(pred)] + [
        {"GT": str(tmp_path), "FIRST": str(first)}.get(a, a) for a in extra]
    assert main(argv) == 1
    assert re.search(message, capsys.readouterr().err)


def test_eval_names_a_missing_prediction_folder(run, tmp_path, capsys):
    _, first = run
    assert main(["eval", "--pred", str(tmp_path / "nope"), "--first-mask", str(first)]) == 1
    err = capsys.readouterr().err
    assert "prediction folder" in err and "does not exist" in err


def test_baseline_still_needs_gt(tmp_path, capsys):
    assert main(["eval", "--baseline-out", str(tmp_path / "b")]) == 1
    assert "--baseline-out copies ground-truth first masks" in capsys.readouterr().err
