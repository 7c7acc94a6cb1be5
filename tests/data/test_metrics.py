"""mlvos.data.metrics / evaluate / `mlvos eval` against a port of the official DAVIS 2017 code."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlvos.data import metrics as M
from mlvos.data.evaluate import (
    GLOBAL_KEYS,
    copy_first_mask_baseline,
    evaluate_folders,
    evaluate_sequence,
)
from mlvos.errors import DatasetError, InputError
from mlvos.palette import write_mask

_spec = importlib.util.spec_from_file_location(
    "davis_official_reference", Path(__file__).with_name("davis_official_reference.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


# ------------------------------------------------------------------------------------ helpers


def blobs(h, w, t, n_obj, rng, *, vanish=None, border=False):
    """(t, h, w) uint8 ids of moving ellipses; object `vanish` disappears after half the clip."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((t, h, w), np.uint8)
    for k in range(1, n_obj + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if border:
            cy, cx = (0.0, rng.uniform(0, w)) if k % 2 else (rng.uniform(0, h), w - 1.0)
        ry, rx = rng.uniform(2, h / 3), rng.uniform(2, w / 3)
        vy, vx = rng.uniform(-2, 2, size=2)
        for f in range(t):
            if vanish == k and f >= t // 2:
                continue
            inside = ((yy - cy - vy * f) / ry) ** 2 + ((xx - cx - vx * f) / rx) ** 2 <= 1
            out[f][inside] = k
    return out


def perturb(ids, rng, p=0.02):
    """A prediction: GT shifted by a pixel and with some random ids flipped."""
    pred = np.roll(ids, shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(1, 2))
    flip = rng.random(pred.shape) < p
    pred = pred.copy()
    pred[flip] = rng.integers(0, max(int(ids.max()), 1) + 1, size=int(flip.sum()))
    return pred.astype(np.uint8)


def write_seq(root: Path, seq: str, ids: np.ndarray, mode: str = "P") -> None:
    for f, frame in enumerate(ids):
        path = root / seq / f"{f:05d}.png"
        if mode == "P":
            write_mask(path, frame)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame, mode="L").save(path)


def oracle_sequence(gt_root, res_root, seq):
    """Per-frame (J, F) of the official loop for one sequence."""
    gt, _void, ids = ref.get_all_masks(str(gt_root), seq)
    gt, ids = gt[:, 1:-1], ids[1:-1]
    res = ref.read_masks(str(res_root), seq, ids)
    return ref.evaluate_semisupervised(gt, res, None)


def random_pairs(rng):
    """(gt, pred) binary stacks covering random and edge cases, several odd sizes."""
    cases = []
    for h, w in [(24, 31), (37, 20), (41, 43), (61, 107)]:
        gt = blobs(h, w, 4, 1, rng)[..., :] == 1
        cases.append((gt, perturb(gt.astype(np.uint8), rng, 0.05) == 1))
        cases.append((rng.random((3, h, w)) < 0.3, rng.random((3, h, w)) < 0.3))
    h, w = 29, 33
    empty, full = np.zeros((h, w), bool), np.ones((h, w), bool)
    one = empty.copy()
    one[7, 9] = True
    corner = empty.copy()
    corner[-1, -1] = True
    corner0 = empty.copy()
    corner0[0, 0] = True
    edge = empty.copy()
    edge[:, -3:] = True
    row = empty.copy()
    row[-1, :] = True
    for a, b in [
        (empty, empty),
        (empty, one),
        (one, empty),
        (full, full),
        (full, empty),
        (empty, full),
        (full, one),
        (one, one),
        (one, corner),
        (corner, corner),
        (corner0, corner),
        (edge, full),
        (row, edge),
        (edge, edge),
    ]:
        cases.append((a, b))
    return cases


# ------------------------------------------------------------------------------------ disk


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4, 5, 8, 11, 4.0, 7.0, np.float64(6.0)])
def test_disk_matches_skimage_formula(radius):
    r = int(radius)
    brute = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    for y in range(-r, r + 1):
        for x in range(-r, r + 1):
            brute[y + r, x + r] = x * x + y * y <= radius * radius
    got = M.disk(radius)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, brute)
    np.testing.assert_array_equal(got, ref.disk_formula(radius))


def test_disk_matches_skimage_if_installed():
    morphology = pytest.importorskip("skimage.morphology")
    for r in [1, 2, 3, 4, 5, 8, 4.0]:
        np.testing.assert_array_equal(M.disk(r), morphology.disk(r))


def test_bound_pixels_is_ceil_of_diagonal():
    assert M.bound_pixels((480, 854)) == 8.0  # ceil(0.008 * 979.6)
    assert M.bound_pixels((241, 427)) == 4.0
    assert M.bound_pixels((20, 20)) == 1.0
    assert M.bound_pixels((20, 20), bound_th=3) == 3


# ------------------------------------------------------------------------------------ metrics


def test_seg2bmap_matches_official():
    rng = np.random.default_rng(0)
    for gt, pred in random_pairs(rng):
        for m in (gt, pred):
            frames = m if m.ndim == 3 else m[None]
            stack = M.seg2bmap(frames)
            for f, frame in enumerate(frames):
                expected = ref._seg2bmap(frame)
                np.testing.assert_array_equal(M.seg2bmap(frame), expected)
                np.testing.assert_array_equal(stack[f], expected)


def test_iou_matches_official_and_edge_cases():
    rng = np.random.default_rng(1)
    for gt, pred in random_pairs(rng):
        np.testing.assert_array_equal(M.db_eval_iou(gt, pred), ref.db_eval_iou(gt, pred))
        void = rng.random(gt.shape) < 0.1
        np.testing.assert_array_equal(
            M.db_eval_iou(gt, pred, void), ref.db_eval_iou(gt, pred, void)
        )
    z = np.zeros((2, 5, 5), bool)
    o = np.ones((2, 5, 5), bool)
    assert M.db_eval_iou(z[0], z[0]) == 1  # both empty
    assert M.db_eval_iou(z[0], o[0]) == 0
    np.testing.assert_array_equal(M.db_eval_iou(z, z), [1.0, 1.0])
    np.testing.assert_array_equal(M.db_eval_iou(o, o), [1.0, 1.0])


def test_boundary_matches_official_exactly():
    rng = np.random.default_rng(2)
    for gt, pred in random_pairs(rng):
        ours, theirs = M.db_eval_boundary(gt, pred), ref.db_eval_boundary(gt, pred)
        np.testing.assert_array_equal(ours, theirs)
        void = rng.random(gt.shape) < 0.05
        np.testing.assert_array_equal(
            M.db_eval_boundary(gt, pred, void), ref.db_eval_boundary(gt, pred, void)
        )


def test_clip_crop_matches_official():
    rng = np.random.default_rng(4)
    for gt, pred in random_pairs(rng):
        gt3, pred3 = (gt, pred) if gt.ndim == 3 else (gt[None], pred[None])
        j, f = M.db_eval_clip(gt3, pred3)
        np.testing.assert_array_equal(j, ref.db_eval_iou(gt3, pred3))
        np.testing.assert_array_equal(f, ref.db_eval_boundary(gt3, pred3))
    z = np.zeros((3, 12, 14), bool)
    np.testing.assert_array_equal(M.db_eval_clip(z, z), (np.ones(3), np.ones(3)))


def test_boundary_radius_8_full_davis_frame():
    rng = np.random.default_rng(3)
    gt = blobs(480, 854, 1, 1, rng)[0] == 1
    pred = perturb(gt.astype(np.uint8)[None], rng, 0.001)[0] == 1
    assert M.db_eval_boundary(gt, pred) == ref.db_eval_boundary(gt, pred)


def test_boundary_special_cases():
    z = np.zeros((9, 9), bool)
    one = z.copy()
    one[4, 4] = True
    assert M.db_eval_boundary(z, z) == 1  # no boundary on either side
    assert M.db_eval_boundary(one, z) == 0  # GT boundary, none predicted
    assert M.db_eval_boundary(z, one) == 0  # predicted boundary, none in GT
    assert M.db_eval_boundary(one, one) == 1
    # outside pixels only count through the last-row/column rule, so a whole-frame mask has no
    # boundary at all: whole-frame GT vs empty prediction scores F = 1 (official quirk)
    full = np.ones((9, 9), bool)
    assert M.seg2bmap(full).sum() == ref._seg2bmap(full).sum() == 0
    assert M.db_eval_boundary(full, z) == ref.db_eval_boundary(full, z) == 1


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 50, 255, 256, 257, 300])
def test_db_statistics_matches_official(n):
    rng = np.random.default_rng(n)
    values = rng.random(n)
    values[rng.random(n) < 0.1] = 1.0
    ours = M.db_statistics(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # uint8 overflow at n == 256
        theirs = ref.db_statistics(values)
    if n == 256 and np.isnan(theirs[2]):
        # numpy >= 2 only: the official `ids[4] + 1` wraps a uint8 255 to 0 -> empty last bin.
        # Under numpy 1.x (the official code's era) it is 256; we follow that.
        theirs = (theirs[0], theirs[1], values[0:65].mean() - values[191:256].mean())
    np.testing.assert_array_equal(np.array(ours), np.array(theirs))


# ------------------------------------------------------------------------------------ folders


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """GT + predictions covering the protocol's corner cases; returns (gt_dir, pred_dir)."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("davis")
    gt_dir, pred_dir = root / "gt", root / "pred"
    seqs = {}
    # five objects, ids 1..5
    seqs["five"] = blobs(40, 56, 7, 5, rng)
    # object 2 vanishes mid-sequence
    seqs["vanish"] = blobs(33, 45, 8, 3, rng, vanish=2)
    # odd size, objects touching the border, a void band
    odd = blobs(241, 427, 4, 2, rng, border=True)
    odd[:, 100:103, :] = 255
    seqs["odd"] = odd
    # first frame ids {1, 3}: object 2 absent but counted; id 4 appears later and is ignored
    gap = blobs(30, 30, 6, 3, rng)
    gap[0][gap[0] == 2] = 0
    gap[3:, 0:4, 0:4] = 4
    seqs["gap"] = gap
    # 1-pixel object and a whole-frame object
    tiny = np.zeros((5, 21, 19), np.uint8)
    tiny[:, 10, 9] = 1
    seqs["tiny"] = tiny
    full = np.ones((5, 17, 23), np.uint8)
    seqs["full"] = full
    for name, ids in seqs.items():
        write_seq(gt_dir, name, ids)
    preds = {
        "five": perturb(seqs["five"], rng),
        "vanish": perturb(seqs["vanish"], rng),
        "odd": perturb(np.where(seqs["odd"] == 255, 0, seqs["odd"]).astype(np.uint8), rng),
        # fewer objects than the GT: only id 1 predicted -> 2, 3 zero-padded
        "gap": np.where(seqs["gap"] == 1, 1, 0).astype(np.uint8),
        "tiny": np.roll(seqs["tiny"], 1, axis=2),
        # all-empty prediction
        "full": np.zeros_like(full),
    }
    for name, ids in preds.items():
        write_seq(pred_dir, name, ids, mode="L" if name == "vanish" else "P")
    # the first and last prediction frames are not needed
    (pred_dir / "five" / "00000.png").unlink()
    (pred_dir / "five" / "00006.png").unlink()
    return gt_dir, pred_dir


def test_folders_match_official(dataset):
    gt_dir, pred_dir = dataset
    result = evaluate_folders(gt_dir, pred_dir)
    names = [s.name for s in result.sequences]
    assert names == sorted(names)
    official = ref.evaluate(str(gt_dir), str(pred_dir), names)
    objs = result.objects
    assert [o.name for o in objs] == list(official["J"]["M_per_object"])
    for key, attr in (("J", "j"), ("F", "f")):
        for stat, suffix in (("M", "mean"), ("R", "recall"), ("D", "decay")):
            ours = [getattr(o, f"{attr}_{suffix}") for o in objs]
            np.testing.assert_allclose(ours, official[key][stat], rtol=0, atol=1e-4)
            np.testing.assert_array_equal(ours, official[key][stat])  # in fact bit-exact
    g_ours, g_ref = result.summary(), ref.global_results(official)
    for k in GLOBAL_KEYS:
        assert g_ours[k] == pytest.approx(g_ref[k], abs=1e-4)
        assert g_ours[k] == g_ref[k]
    for seq in result.sequences:
        j_ref, f_ref = oracle_sequence(gt_dir, pred_dir, seq.name)
        np.testing.assert_array_equal(np.array([o.J for o in seq.objects]), j_ref)
        np.testing.assert_array_equal(np.array([o.F for o in seq.objects]), f_ref)


def test_object_set_rules(dataset):
    gt_dir, pred_dir = dataset
    result = evaluate_folders(gt_dir, pred_dir, ["gap", "five", "full"])
    by_name = {s.name: s for s in result.sequences}
    assert [o.object for o in by_name["gap"].objects] == [1, 2, 3]  # id 4 (later) ignored
    assert len(by_name["five"].objects) == 5
    assert by_name["five"].frames == 5
    # gap: the prediction has only id 1, so objects 2 and 3 are zero-padded (J=0 where GT has them)
    gap = by_name["gap"].objects
    assert gap[2].j_mean < 1.0
    # a whole-frame GT mask has no boundary under _seg2bmap's rule, so an empty prediction gets
    # F = 1 (both boundaries empty) while J = 0: an official quirk we reproduce
    full = by_name["full"].objects[0]
    assert full.j_mean == 0.0 and full.f_mean == 1.0


def test_vanishing_object_scores_one_when_predicted_empty(tmp_path):
    rng = np.random.default_rng(11)
    gt = blobs(32, 40, 9, 2, rng, vanish=2)
    result = evaluate_sequence(gt, gt.copy(), "v")
    for o in result.objects:
        np.testing.assert_array_equal(o.J, 1.0)
        np.testing.assert_array_equal(o.F, 1.0)
        assert (o.j_mean, o.j_recall, o.j_decay) == (1.0, 1.0, 0.0)


def test_more_objects_than_gt_is_an_error(dataset, tmp_path):
    gt_dir, pred_dir = dataset
    bad = tmp_path / "pred"
    shutil.copytree(pred_dir / "vanish", bad / "vanish")
    frame = np.array(Image.open(bad / "vanish" / "00003.png"))
    frame[0, 0] = 4  # the GT has 3 objects
    Image.fromarray(frame, mode="L").save(bad / "vanish" / "00003.png")
    with pytest.raises(DatasetError, match=r"vanish.*00003\.png.*object id 4.*3 object"):
        evaluate_folders(gt_dir, bad, ["vanish"])
    with pytest.raises(ref.OfficialExit):
        oracle_sequence(gt_dir, bad, "vanish")
    frame[0, 0] = 255
    Image.fromarray(frame, mode="L").save(bad / "vanish" / "00003.png")
    with pytest.raises(DatasetError, match="255"):
        evaluate_folders(gt_dir, bad, ["vanish"])


def test_missing_and_mismatched_predictions(dataset, tmp_path):
    gt_dir, pred_dir = dataset
    with pytest.raises(DatasetError, match=r"sequence tiny: prediction folder .*tiny"):
        evaluate_folders(gt_dir, tmp_path, ["tiny"])
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate_folders(gt_dir, tmp_path / "nope", ["tiny"])
    bad = tmp_path / "pred"
    shutil.copytree(pred_dir / "tiny", bad / "tiny")
    (bad / "tiny" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"00002\.png is missing"):
        evaluate_folders(gt_dir, bad, ["tiny"])
    write_mask(bad / "tiny" / "00002.png", np.zeros((20, 19), np.uint8))
    with pytest.raises(DatasetError, match=r"00002\.png is 19x20 .*expected 19x21"):
        evaluate_folders(gt_dir, bad, ["tiny"])
    with pytest.raises(DatasetError, match="sequence nosuch"):
        evaluate_folders(gt_dir, pred_dir, ["nosuch"])


def test_too_short_sequence(tmp_path):
    write_seq(tmp_path / "gt", "short", np.ones((2, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="at least 3 frames"):
        evaluate_folders(tmp_path / "gt", tmp_path / "gt")


# ------------------------------------------------------------------------------------ outputs


def test_json_and_csv(dataset, tmp_path):
    gt_dir, pred_dir = dataset
    result = evaluate_folders(gt_dir, pred_dir)
    result.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    for k in GLOBAL_KEYS:
        assert k in data
        lo = -1.0 if k.endswith("Decay") else 0.0
        assert lo <= data[k] <= 1.0
    assert data["J&F-Mean"] == pytest.approx((data["J-Mean"] + data["F-Mean"]) / 2)
    assert len(data["per_object"]) == data["num_objects"] == len(result.objects)
    for o in data["per_object"]:
        assert {"sequence", "object", "J-Mean", "F-Mean"} <= set(o)
        assert 0.0 <= o["J-Mean"] <= 1.0 and 0.0 <= o["F-Mean"] <= 1.0
    assert [s["sequence"] for s in data["per_sequence"]] == [s.name for s in result.sequences]

    result.write_csv(tmp_path / "g.csv")
    rows = list(csv.reader((tmp_path / "g.csv").open()))
    assert rows[0] == list(GLOBAL_KEYS)
    g = ref.global_results(
        ref.evaluate(str(gt_dir), str(pred_dir), [s.name for s in result.sequences])
    )
    assert rows[1] == [f"{g[k]:.3f}" for k in GLOBAL_KEYS]
    result.write_per_object_csv(tmp_path / "o.csv")
    rows = list(csv.reader((tmp_path / "o.csv").open()))
    assert rows[0] == ["Sequence", "J-Mean", "F-Mean"]
    assert rows[1][0] == "five_1" and len(rows) == 1 + len(result.objects)
    table = result.format_table()
    assert "five" in table and "J&F-Mean" in table


def test_baseline_copy_first_mask(dataset, tmp_path):
    gt_dir, _ = dataset
    out = copy_first_mask_baseline(gt_dir, tmp_path / "base")
    first = np.array(Image.open(gt_dir / "odd" / "00000.png"))
    for f in ("00000.png", "00003.png"):
        img = Image.open(out / "odd" / f)
        assert img.mode == "P"
        np.testing.assert_array_equal(np.array(img), np.where(first == 255, 0, first))
    result = evaluate_folders(gt_dir, out)
    names = [s.name for s in result.sequences]
    g_ref = ref.global_results(ref.evaluate(str(gt_dir), str(out), names))
    assert result.summary() == pytest.approx(g_ref, abs=1e-4)
    tiny = next(s for s in result.sequences if s.name == "tiny")
    assert tiny.j_mean == 1.0 and tiny.f_mean == 1.0  # static object: the baseline is perfect
    with pytest.raises(Exception, match="already exists"):
        copy_first_mask_baseline(gt_dir, out)


def test_cli_eval_writes_json(dataset, tmp_path, capsys):
    from mlvos.cli import main

    gt_dir, pred_dir = dataset
    out = tmp_path / "r.json"
    rc = main(
        [
            "eval",
            "--gt",
            str(gt_dir),
            "--pred",
            str(pred_dir),
            "--json",
            str(out),
            "--csv",
            str(tmp_path / "g.csv"),
            "--sequences",
            "five",
            "tiny",
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert [s["sequence"] for s in data["per_sequence"]] == ["five", "tiny"]
    assert (tmp_path / "g.csv").is_file()
    text = capsys.readouterr().out
    assert "five" in text and "global (2 sequences, 6 objects)" in text

    rc = main(
        [
            "eval",
            "--gt",
            str(gt_dir),
            "--baseline-out",
            str(tmp_path / "b"),
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    assert rc == 0 and (tmp_path / "b" / "five" / "00000.png").is_file()
    assert json.loads((tmp_path / "b.json").read_text())["num_objects"] == 15

    rc = main(["eval", "--gt", str(gt_dir), "--pred", str(tmp_path / "missing")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_sequence_accepts_full_or_evaluated_frames():
    rng = np.random.default_rng(5)
    gt = blobs(20, 26, 6, 2, rng)
    pred = perturb(gt, rng)
    a = evaluate_sequence(gt, pred, "s")
    b = evaluate_sequence(gt, pred[1:-1], "s")
    for oa, ob in zip(a.objects, b.objects, strict=True):
        np.testing.assert_array_equal(oa.J, ob.J)
        np.testing.assert_array_equal(oa.F, ob.F)
    with pytest.raises(InputError, match="does not match the GT"):
        evaluate_sequence(gt, pred[:, :-1], "s")
