"""The calibration feed cache: reuse under the same key, rebuild on any change (FP32 graphs,
dataset files, options) or damage, and recording from the real propagation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mlvos.calib import cache
from mlvos.calib.record import CalibrationData, open_dataset, record, select_positions
from mlvos.runtime.spec import Graph
from mlvos.runtime.spec import Tensor as T


def _data(n: int = 2, seed: int = 0) -> CalibrationData:
    rng = np.random.default_rng(seed)
    feeds = {g: [] for g in Graph.ALL}
    for i in range(n):
        objects = 1 + i  # shapes differ between samples
        feeds[Graph.QUERY_ENCODER].append({T.FRAME: rng.integers(0, 255, (1, 3, 32, 32), np.uint8)})
        feeds[Graph.MEMORY_ENCODER].append(
            {
                T.FRAME: rng.integers(0, 255, (1, 3, 32, 32), np.uint8),
                T.PROBS: rng.random((objects, 32, 32), np.float32),
            }
        )
        feeds[Graph.READ_DECODER].append({T.BANK_VALID: np.ones((objects, 4), np.float32)})
    return CalibrationData([("a", 1 + i) for i in range(n)], feeds)


def _key(**over) -> dict:
    kw = dict(
        fp32_sha256={g: "0" * 64 for g in Graph.ALL},
        dataset={"root": "/d", "split": "val", "sequences": ["a"], "fingerprint": "f"},
        positions=[("a", 1), ("a", 2)],
        mem_every=5,
    )
    kw.update(over)
    return cache.cache_key(**kw)


class _Producer:
    def __init__(self):
        self.calls = 0

    def __call__(self) -> CalibrationData:
        self.calls += 1
        return _data()


def test_roundtrip_and_reuse(tmp_path):
    produce = _Producer()
    first, reused = cache.load_or_record(tmp_path / "c", _key(), produce)
    again, reused2 = cache.load_or_record(tmp_path / "c", _key(), produce)
    assert (reused, reused2, produce.calls) == (False, True, 1)
    assert again.positions == first.positions
    for g in Graph.ALL:
        for a, b in zip(first.feeds[g], again.feeds[g]):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])


@pytest.mark.parametrize(
    "change",
    [
        {"fp32_sha256": {g: "1" * 64 for g in Graph.ALL}},
        {"dataset": {"root": "/d", "split": "val", "sequences": ["a"], "fingerprint": "g"}},
        {"positions": [("a", 1), ("a", 3)]},
        {"mem_every": 2},
    ],
    ids=["fp32-graphs", "dataset-files", "positions", "options"],
)
def test_stale_key_rebuilds_cleanly(tmp_path, change):
    folder = tmp_path / "c"
    cache.load_or_record(folder, _key(), _Producer())
    (folder / "leftover.tmp").write_text("x")  # anything else in the folder goes too
    data, why = cache.load(folder, _key(**change))
    assert data is None and why.startswith("stale (changed: ")
    produce = _Producer()
    _, reused = cache.load_or_record(folder, _key(**change), produce)
    assert not reused and produce.calls == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [cache.META_FILE] + [f"{g}.npz" for g in Graph.ALL]
    )
    assert json.loads((folder / cache.META_FILE).read_text())["key"] == _key(**change)


@pytest.mark.parametrize("damage", ["truncate", "delete", "meta"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    folder = tmp_path / "c"
    cache.load_or_record(folder, _key(), _Producer())
    npz = folder / f"{Graph.READ_DECODER}.npz"
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "delete":
        npz.unlink()
    else:
        (folder / cache.META_FILE).write_text("{not json")
    produce = _Producer()
    _, reused = cache.load_or_record(folder, _key(), produce)
    assert not reused and produce.calls == 1
    assert cache.load(folder, _key())[0] is not None


def test_fingerprint_follows_dataset_files(calib_data, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(calib_data, data)
    ds, names = open_dataset(data, "val", None, "--data")
    before = cache.dataset_fingerprint(ds, names)
    assert cache.dataset_fingerprint(ds, names) == before
    frame = ds[names[0]].frames[2]
    st = frame.stat()
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache.dataset_fingerprint(ds, names) != before
    # Only the sequences used count.
    other = ds[names[1]].frames[1]
    one = cache.dataset_fingerprint(ds, names[:1])
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert cache.dataset_fingerprint(ds, names[:1]) == one


def test_selection_even_and_random():
    lengths = {"a": 5, "b": 3}  # usable frames: a1..a4, b1..b2
    even = select_positions(lengths, 3)
    assert even == [("a", 1), ("a", 3), ("b", 2)]  # indices 0, 2.5 -> 2, 5
    rnd = select_positions(lengths, 4, selection="random", seed=1)
    assert len(set(rnd)) == 4 and rnd == select_positions(lengths, 4, selection="random", seed=1)
    assert all(t >= 1 for _, t in rnd)


def test_record_real_propagation(tiny_export, calib_data):
    """The feeds are what the runtime passes: padded frames, soft probabilities, a bank whose
    validity grows as the memory fills (empty slots zero)."""
    ds, names = open_dataset(calib_data, "val", None, "--data")
    positions = [(names[0], 1), (names[0], 4)]
    data = record(tiny_export, ds, positions, mem_every=2)
    assert len(data) == 2
    objects = int(ds[names[0]].first_mask().max())
    q = data.feeds[Graph.QUERY_ENCODER][1][T.FRAME]
    assert q.shape == (1, 3, 64, 96) and q.dtype == np.uint8
    m = data.feeds[Graph.MEMORY_ENCODER][0]
    assert m[T.PROBS].shape == (objects, 64, 96) and m[T.PROBS].dtype == np.float32
    assert 0.0 <= m[T.PROBS].min() and m[T.PROBS].max() <= 1.0
    assert 0.0 < m[T.PROBS].max() < 1.0  # the predicted (soft) probabilities, not a mask
    r1, r4 = data.feeds[Graph.READ_DECODER]
    assert r1[T.BANK_KEY].shape[:2] == (objects, 4)
    assert r1[T.BANK_VALID].sum(axis=1).tolist() == [1.0] * objects  # only frame 0 in memory
    assert (r4[T.BANK_VALID].sum(axis=1) > 1).all()  # frames 0, 2 and the previous one
    empty = r1[T.BANK_VALID][0] == 0
    assert not r1[T.BANK_KEY][0][empty].any()
