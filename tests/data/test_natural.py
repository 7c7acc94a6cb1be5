"""Natural-video generator and photo library: exact labels, determinism, hard cases, no colour
shortcut, and clear errors for bad photo folders."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mlvos.data import natural
from mlvos.data.natural import (
    ATTRIBUTES,
    NaturalSequence,
    PlacementError,
    make_natural_dataset,
    measure_attributes,
    natural_clip,
    placed_sequence,
    random_mask,
)
from mlvos.data.photos import PhotoLibrary, object_split
from mlvos.errors import DatasetError, InputError


@pytest.fixture(scope="module")
def photos(photo_folder):
    return PhotoLibrary(photo_folder)


def test_library_reads_a_plain_folder(photos):
    assert len(photos.backgrounds) == 4 and len(photos.objects) == 3
    assert all(b.dtype == np.uint8 and b.shape[2] == 3 for b in photos.backgrounds)
    assert all(o.shape[2] == 4 for o in photos.objects)


def _flat_colours(seq):
    """Give every object a unique flat colour and a hard alpha, switch off photometric effects
    and blur: a painted pixel's colour then names the frontmost object that painted it."""
    colours = {}
    for i, ob in enumerate(seq.objects):
        c = np.array([(37 * (i + 1)) % 256, (91 * (i + 1)) % 256, 200], np.float32)
        ob.sprite[..., :3] = c
        ob.sprite[..., 3] = (ob.sprite[..., 3] > 0.5).astype(np.float32)
        ob.blur = 0.0
        colours[i] = c
    seq.background[:] = 0
    seq.illumination, seq.light, seq.noise_sigma = False, False, 0.0
    return colours


# bilinear sampling of an upscaled sprite blends colours over a few pixels at its edges
_EDGE = np.ones((7, 7), np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_are_the_painted_order(photos, seed):
    seq = NaturalSequence(seed, 12, 96, 160, photos, force=("distractor", "occluded"))
    colours = _flat_colours(seq)
    for t in (0.0, 5.0, 11.0):
        img, labels = seq.render(t)
        # interior pixels (away from bilinear edges) of every labelled object
        for i, ob in enumerate(seq.objects):
            painted = np.all(np.abs(img.astype(np.float32) - colours[i]) < 1.5, axis=2)
            painted = cv2.erode(painted.astype(np.uint8), _EDGE) > 0
            if ob.label:
                assert np.all(labels[painted] == ob.label), (t, i)
            else:  # a distractor in front is background
                assert np.all(labels[painted] == 0), (t, i)
        # and every target pixel is painted by that target's colour where it is interior
        for i, ob in enumerate(seq.objects):
            if not ob.label:
                continue
            inner = cv2.erode((labels == ob.label).astype(np.uint8), _EDGE)
            if inner.any():
                assert np.all(np.abs(img[inner > 0].astype(np.float32) - colours[i]) < 1.5)


def test_a_scene_without_visible_objects_is_drawn_again(photos, monkeypatch):
    # At small sizes an occasional draw leaves every object outside the frame (a 60-minute
    # training crashed on one at 160 px); training and datasets draw again from the same rng.
    # Seed 2 at 32x32 is such a draw with the test photos.
    with pytest.raises(PlacementError, match="use a larger size"):
        NaturalSequence(2, 1, 32, 32, photos, reference=480, max_objects=3)
    a = placed_sequence(2, 1, 32, 32, photos, reference=480, max_objects=3)
    b = placed_sequence(np.random.default_rng(2), 1, 32, 32, photos, reference=480,
                        max_objects=3)
    la, lb = a.render(0.0)[1], b.render(0.0)[1]
    assert la.max() >= 1 and np.array_equal(la, lb)
    # Out of attempts, the error still says what failed, as an InputError.
    monkeypatch.setattr(natural, "PLACEMENT_ATTEMPTS", 1)
    with pytest.raises(InputError, match="cannot place any object visibly in a 32x32 frame"):
        placed_sequence(2, 1, 32, 32, photos, reference=480, max_objects=3)


def test_deterministic_per_seed(photos):
    a = NaturalSequence(5, 10, 64, 96, photos)
    b = NaturalSequence(5, 10, 64, 96, photos)
    c = NaturalSequence(6, 10, 64, 96, photos)
    for t in (0.0, 4.0, 9.0):
        fa, la = a.render(t)
        fb, lb = b.render(t)
        assert np.array_equal(fa, fb) and np.array_equal(la, lb)
    assert not np.array_equal(a.render(4.0)[0], c.render(4.0)[0])
    ca = natural_clip(3, photos, size=64, reference=96)
    cb = natural_clip(3, photos, size=64, reference=96)
    assert np.array_equal(ca.frames, cb.frames) and np.array_equal(ca.labels, cb.labels)
    assert ca.frames.shape == (3, 64, 64, 3) and 1 <= ca.num_objects <= 3


def test_dataset_byte_identical_with_attributes(photos, tmp_path):
    kw = dict(sequences=3, frames=6, seed=4, height=80, width=128)
    a = make_natural_dataset(tmp_path / "a", photos, **kw)
    b = make_natural_dataset(tmp_path / "b", photos, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    meta = json.loads((a / "natural.json").read_text())
    assert set(meta["attributes"]) == {"natural-0000", "natural-0001", "natural-0002"}
    for seq in meta["attributes"].values():
        for attrs in seq.values():
            assert set(attrs) <= set(ATTRIBUTES)
    with pytest.raises(InputError, match="already exists"):
        make_natural_dataset(tmp_path / "a", photos, **kw)


@pytest.mark.parametrize("attr", ["distractor", "camouflage", "occluded", "fast"])
def test_forced_hard_cases_occur(photos, attr):
    hits = 0
    for seed in range(4):
        seq = NaturalSequence(seed, 24, 120, 200, photos, force=(attr,), min_objects=2)
        if any(attr in a for a in measure_attributes(seq).values()):
            hits += 1
    assert hits >= 3, attr


def test_lookalikes_share_a_sprite_and_some_are_background(photos):
    seq = NaturalSequence(1, 8, 120, 200, photos, force=("distractor",))
    groups = [o for o in seq.objects if o.group == 0]
    assert len(groups) >= 2
    assert any(o.label == 0 for o in groups) and any(o.label > 0 for o in groups)


def test_random_masks_are_one_piece():
    rng = np.random.default_rng(0)
    for kind in ("blob", "polygon", "holes", "thin", "ellipse"):
        for _ in range(5):
            m = random_mask(rng, 60, 80, kind)
            n, _ = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            assert n == 2 and m.sum() >= 0.05 * m.size, kind


def test_bad_photo_folders(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        PhotoLibrary(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image"):
        PhotoLibrary(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        PhotoLibrary(bad)
    small = tmp_path / "small"
    small.mkdir()
    cv2.imwrite(str(small / "tiny.jpg"), np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(DatasetError, match="128 px.*tiny.jpg"):
        PhotoLibrary(small)
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        PhotoLibrary(f)


def test_data_cli_natural_errors(tmp_path, capsys):
    from mlvos.cli import main

    assert main(["data", "synth", "--style", "natural", "--photos", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o")]) != 0
    assert "no such folder" in capsys.readouterr().err
    assert main(["data", "synth", "--photos", str(tmp_path), "--out", str(tmp_path / "o")]) != 0
    assert "--style natural" in capsys.readouterr().err


def test_object_split_keeps_variants_together():
    assert object_split("people/fireman200b.png") == object_split("people/fireman240a.png")
    names = [f"animals/a{chr(97 + i)}{chr(97 + j)}.png" for i in range(26) for j in range(26)]
    share = np.mean([object_split(n) == "val" for n in names])
    assert 0.08 < share < 0.25


# ------------------------------------------------------------- the installed photo set (real)


@pytest.fixture(scope="session")
def photo_set():
    """The project's photo set (default folder; installed from Debian packages once)."""
    from mlvos.data.photos import resolve_photos_dir

    try:
        return resolve_photos_dir(None, progress=False)
    except DatasetError as e:  # not a Debian machine or no mirror: say so, don't pass silently
        pytest.skip(f"photo set not installable here: {e}")


def test_photo_set_splits_are_disjoint(photo_set):
    meta = json.loads((photo_set / "photos.json").read_text())
    by_split = {"train": set(), "val": set()}
    for f in meta["files"]:
        by_split[f["split"]].add(f["sha256"])
        assert (photo_set / f["path"]).is_file()
    assert by_split["train"] and by_split["val"]
    assert not by_split["train"] & by_split["val"]
    val_bg = {f["package"] for f in meta["files"] if f["split"] == "val"
              and f["role"] == "background"}
    train_bg = {f["package"] for f in meta["files"] if f["split"] == "train"
                and f["role"] == "background"}
    assert val_bg == {"opencv-doc"} and "opencv-doc" not in train_bg
    assert (photo_set / "licenses" / "opencv-doc.copyright").is_file()


def _thumb(img):
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    t = cv2.resize(g.astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA).ravel()
    return (t - t.mean()) / (t.std() + 1e-6)


def test_scikit_image_samples_are_not_in_the_photo_set(photo_set):
    """scikit-image's bundled samples are reserved for independent validation."""
    skimage_data = pytest.importorskip("skimage.data")
    from pathlib import Path

    folder = Path(skimage_data.__file__).parent
    samples = [p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    assert samples, "scikit-image ships no sample images here"
    thumbs = []
    for p in samples:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 16:
            thumbs.append((p.name, _thumb(img[..., ::-1])))
    for split in ("train", "val"):
        lib = PhotoLibrary(photo_set, split)
        for photo in lib.backgrounds + [o[..., :3] for o in lib.objects]:
            t = _thumb(photo)
            for name, s in thumbs:
                assert float(np.dot(t, s)) / t.size < 0.97, f"{name} looks like a {split} photo"


def _colour_iou(seq, times=(10.0, 20.0)):
    """IoU of a per-pixel colour classifier fit on frame 0 (targets vs rest, 16^3 RGB bins,
    likelihood ratio) with the targets of later frames."""
    f0, l0 = seq.render(0.0)

    def bins(f):
        q = (f // 16).astype(np.int64)
        return q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]

    b0 = bins(f0).ravel()
    tgt = np.bincount(b0[l0.ravel() > 0], minlength=4096) + 0.5
    rest = np.bincount(b0[l0.ravel() == 0], minlength=4096) + 0.5
    target_like = tgt / tgt.sum() > rest / rest.sum()
    ious = []
    for t in times:
        f, lab = seq.render(t)
        pred, gt = target_like[bins(f)], lab > 0
        ious.append((pred & gt).sum() / max(1, (pred | gt).sum()))
    return float(np.mean(ious))


def test_no_colour_shortcut(photo_set):
    """Colour alone separates the procedural generator's targets (mean IoU ~0.6) but not the
    natural generator's (measured mean 0.23 over these 16 sequences); the bound is 0.35."""
    from mlvos.data.synth import SynthSequence

    lib = PhotoLibrary(photo_set, "train")
    natural = [_colour_iou(NaturalSequence(np.random.default_rng([99, i]), 40, 240, 427, lib))
               for i in range(16)]
    synth = [_colour_iou(SynthSequence(np.random.default_rng([99, i]), 40, 240, 427))
             for i in range(16)]
    assert np.mean(synth) > 0.5  # the classifier does find a colour shortcut where one exists
    assert np.mean(natural) < 0.35, natural


def test_demo_and_cli_write_the_same_natural_set(photo_folder, tmp_path):
    """`mlvos demo` calls make_natural_dataset with its defaults, `make natural-val` goes through
    `mlvos data synth --style natural`: both must write the same videos (the demo's natural
    score is the standard natural validation set's; a max_objects of 4 against the CLI's 5 once
    made them differ from the second video on)."""
    from mlvos.cli import main

    kw = dict(sequences=3, frames=4, seed=2027, height=80, width=128)
    a = make_natural_dataset(tmp_path / "a", PhotoLibrary(photo_folder, split="val"), **kw)
    rc = main(["data", "synth", "--style", "natural", "--out", str(tmp_path / "b"),
               "--sequences", "3", "--frames", "4", "--seed", "2027", "--height", "80",
               "--width", "128", "--split", "val", "--photos", str(photo_folder)])
    assert rc == 0
    b = tmp_path / "b"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
