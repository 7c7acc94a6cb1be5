"""Readers: DAVIS 2016/2017, YouTube-VOS, static pairs, including every validation error path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mlvos.data.datasets import DavisDataset, StaticPairs, YouTubeVOS, static_mask_ids
from mlvos.data.synth import make_synthetic_dataset
from mlvos.errors import DatasetError
from mlvos.palette import read_mask, write_frame, write_mask


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("davis") / "ds", sequences=2,
                                  frames=4, seed=1, height=48, width=80)


@pytest.fixture
def davis(pristine, tmp_path):
    """A fresh copy per test, so tests may break it."""
    return shutil.copytree(pristine, tmp_path / "davis")


def test_davis_reads_synthetic(davis):
    ds = DavisDataset(davis, split="val", year=2017)
    assert ds.sequences == ["synth-0000", "synth-0001"] and len(ds) == 2
    seq = ds["synth-0001"]
    assert len(seq) == 4 and seq.annotated == [0, 1, 2, 3]
    assert seq.read_frame(2).shape == (48, 80, 3)
    np.testing.assert_array_equal(seq.read_mask(2), read_mask(seq.masks[2]))
    meta = json.loads((davis / "synth.json").read_text())
    assert seq.num_objects == meta["objects"]["synth-0001"]
    assert ds[0].name == "synth-0000"


def test_davis_2016_masks_are_single_object(davis):
    sets = davis / "ImageSets" / "2016"
    sets.mkdir()
    (sets / "val.txt").write_text("synth-0000\n")
    seq = DavisDataset(davis, year="2016")["synth-0000"]
    assert set(np.unique(seq.read_mask(0)).tolist()) == {0, 1}
    # a binary 0/255 grayscale mask (the DAVIS 2016 format) reads as id 1
    Image.fromarray(np.where(seq.read_mask(1) > 0, 255, 0).astype(np.uint8)).save(seq.masks[1])
    assert set(np.unique(seq.read_mask(1)).tolist()) == {0, 1}


def test_davis_2016_legacy_split_file(davis):
    sets = davis / "ImageSets" / "480p"
    sets.mkdir()
    (sets / "val.txt").write_text("/JPEGImages/480p/synth-0001/00000.jpg "
                                  "/Annotations/480p/synth-0001/00000.png\n")
    assert DavisDataset(davis, year=2016).sequences == ["synth-0001"]


def test_missing_first_annotation(davis):
    (davis / "Annotations" / "480p" / "synth-0000" / "00000.png").unlink()
    with pytest.raises(DatasetError, match=r"first frame.*00000\.png"):
        DavisDataset(davis)


def test_size_mismatch(davis):
    write_mask(davis / "Annotations" / "480p" / "synth-0001" / "00002.png",
               np.zeros((40, 80), np.uint8))
    with pytest.raises(DatasetError, match=r"00002\.png is 80x40 but its frame"):
        DavisDataset(davis)


def test_rgb_mask(davis):
    Image.new("RGB", (80, 48)).save(davis / "Annotations" / "480p" / "synth-0001" / "00003.png")
    with pytest.raises(DatasetError, match=r"synth-0001/00003\.png.*convert to palette"):
        DavisDataset(davis)


def test_empty_sequence(davis):
    for jpg in (davis / "JPEGImages" / "480p" / "synth-0000").iterdir():
        jpg.unlink()
    with pytest.raises(DatasetError, match=r"'synth-0000' is empty"):
        DavisDataset(davis)


def test_listed_but_missing_sequence(davis):
    (davis / "ImageSets" / "2017" / "val.txt").write_text("synth-0000\nghost\n")
    with pytest.raises(DatasetError, match=r"'ghost' is listed.*480p/ghost"):
        DavisDataset(davis)


def test_missing_split_file(davis):
    with pytest.raises(DatasetError, match=r"train\.txt"):
        DavisDataset(davis, split="train")


def _youtube(root, *, drop_first_annotation=False, meta=None):
    """2 videos x 6 frames; annotations every other frame; object 2 of vid_a appears at 00002."""
    base = root / "train"
    rgb = np.full((16, 24, 3), 90, np.uint8)
    videos = {}
    for vid in ("vid_a", "vid_b"):
        for t in range(6):
            write_frame(base / "JPEGImages" / vid / f"{t:05d}.jpg", rgb)
        for t in range(0, 6, 2):
            ids = np.zeros((16, 24), np.uint8)
            ids[2:6, 2:6] = 1
            if vid == "vid_a" and t >= 2:
                ids[8:12, 10:20] = 2
            if not (drop_first_annotation and vid == "vid_a" and t == 2):
                write_mask(base / "Annotations" / vid / f"{t:05d}.png", ids)
        objects = {"1": {"category": "cat", "frames": ["00000", "00002", "00004"]}}
        if vid == "vid_a":
            objects["2"] = {"category": "dog", "frames": ["00002", "00004"]}
        videos[vid] = {"objects": objects}
    (base / "meta.json").write_text(meta if meta is not None else json.dumps({"videos": videos}))
    return root


def test_youtube_vos(tmp_path):
    ds = YouTubeVOS(_youtube(tmp_path), "train", validate=True)
    assert ds.videos == ["vid_a", "vid_b"] and len(ds) == 2
    vid = ds["vid_a"]
    assert len(vid) == 6 and vid.annotated == [0, 2, 4]
    assert vid.masks[1] is None
    assert vid.objects[2].category == "dog" and vid.objects[2].first_frame == "00002"
    assert vid.first_appearance == {1: 0, 2: 2}
    assert vid.read_mask(2).max() == 2
    with pytest.raises(DatasetError, match="no annotation"):
        vid.read_mask(1)


def test_youtube_vos_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"vid_a/00002\.png.*object 2"):
        YouTubeVOS(_youtube(tmp_path / "a", drop_first_annotation=True))
    with pytest.raises(DatasetError, match=r"meta\.json is not a YouTube-VOS meta file"):
        YouTubeVOS(_youtube(tmp_path / "b", meta="{broken"))
    with pytest.raises(DatasetError, match=r"meta\.json does not exist"):
        (tmp_path / "b" / "train" / "meta.json").unlink()
        YouTubeVOS(tmp_path / "b")


def test_static_pairs(tmp_path):
    imgs, masks = tmp_path / "images", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for name in ("a", "b", "lonely"):
        Image.fromarray(np.full((12, 16, 3), 100, np.uint8)).save(imgs / f"{name}.jpg")
    binary = np.zeros((12, 16), np.uint8)
    binary[3:9, 4:12] = 255
    Image.fromarray(binary).save(masks / "a.png")
    write_mask(masks / "b.png", np.where(binary > 0, 2, 0).astype(np.uint8))
    pairs = StaticPairs(imgs, masks)
    assert len(pairs) == 2 and [p.name for p in pairs.unmatched] == ["lonely.jpg"]
    image, ids = pairs[0]
    assert image.shape == (12, 16, 3) and set(np.unique(ids).tolist()) == {0, 1}
    assert set(np.unique(pairs[1][1]).tolist()) == {0, 2}
    voc = np.array([[0, 1, 255, 2]], np.uint8)  # 255 = VOC void boundary -> background
    np.testing.assert_array_equal(static_mask_ids(voc), [[0, 1, 0, 2]])
    soft = np.arange(256, dtype=np.uint8)[None]  # soft saliency map -> threshold
    assert static_mask_ids(soft).sum() == 128
    with pytest.raises(DatasetError, match="no image"):
        StaticPairs(imgs, tmp_path)
