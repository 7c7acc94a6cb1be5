"""Profiler building blocks without a model: statistics, timers, the timed runner proxy, memory
probes, synthetic videos, label agreement and report comparison (numpy only)."""

from __future__ import annotations

import argparse
import types

import numpy as np
import pytest

from mlvos.profiling import (
    REPORT_FORMAT,
    StageTimer,
    WallTimer,
    comparable_metrics,
    compare_reports,
    host_memory,
    reset_peak_rss,
    stage_sum_check,
    summarize,
    timer_for,
)
from mlvos.profiling.cli import _int_list
from mlvos.profiling.gpu_report import final_table, label_agreement
from mlvos.profiling.measure import _disc_video
from mlvos.runtime.spec import TIMED_STAGES


def test_summarize_percentiles_and_fps():
    st = summarize([10.0] * 98 + [20.0, 30.0])
    assert st["n"] == 100
    assert st["p50"] == 10.0 and st["p90"] == 10.0
    assert 20.0 <= st["p99"] <= 30.0
    assert st["mean"] == pytest.approx(10.3)
    assert st["fps"] == pytest.approx(1e3 / 10.3)
    assert summarize([])["mean"] is None


def test_stage_sum_check():
    stats = {s: {"mean": 10.0} for s in TIMED_STAGES}
    stats["total"] = {"mean": 52.0}
    ok = stage_sum_check(stats)
    assert ok["ok"] and ok["sum_ms"] == 50.0 and ok["rel_diff"] == pytest.approx(2 / 52)
    stats["total"] = {"mean": 80.0}
    assert not stage_sum_check(stats)["ok"]


def test_int_list():
    assert _int_list("1..4") == (1, 2, 3, 4)
    assert _int_list("1,2,8") == (1, 2, 8)
    with pytest.raises(argparse.ArgumentTypeError):
        _int_list("one")


class _TickTimer(StageTimer):
    """A 'device' timer whose clock advances 1 ms per mark (deterministic)."""

    kind, name = "device", "ticks"

    def mark(self):
        return 0

    def elapsed_ms(self, start, end):
        return float(end - start)


def test_timer_for_prefers_the_runners_own_timer():
    runner = types.SimpleNamespace(name="fake", synchronize=lambda: None)
    assert isinstance(timer_for(runner), WallTimer)
    runner.make_timer = _TickTimer
    assert isinstance(timer_for(runner), _TickTimer)


def test_host_memory_probe():
    mem = host_memory()
    assert mem["peak_rss_mb"] > 0
    assert isinstance(reset_peak_rss(), bool)


def test_disc_video_fallback_has_every_object():
    pairs = list(_disc_video(0, 3, 96, 128, 3))
    frame, label = pairs[0]
    assert frame.shape == (96, 128, 3) and frame.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2, 3}


def test_label_agreement():
    a = np.zeros((8, 8), np.uint8)
    a[:4] = 1
    b = a.copy()
    b[:2] = 0
    same = label_agreement([a, a, a], [a, a, a], [1])
    assert same["mean_iou"] == 1.0 and same["frames"] == 2
    half = label_agreement([a, a], [a, b], [1])
    assert half["mean_iou"] == pytest.approx(0.5)
    assert half["pixel_agreement"] == pytest.approx(1 - 16 / 64)
    # per object: object 2 absent from both maps counts 1, object 1 halves in the second frame
    two = label_agreement([a, a, a], [a, a, b], [1, 2])
    assert two["per_object_mean_iou"] == {"1": pytest.approx(0.75), "2": 1.0}
    assert two["min_object_iou"] == pytest.approx(0.5)


def test_decisive_mismatch_ignores_near_ties():
    from mlvos.profiling.gpu_numerics import _decisive

    # one object; pixel 0: 0.9 (decisive), pixel 1: 0.51 vs background 0.49 (a near-tie)
    probs = np.array([[[0.9, 0.51]]], np.float32)
    ref = np.array([[1, 1]], np.uint8)
    flipped_tie = _decisive(probs, ref, np.array([[1, 0]], np.uint8))
    assert flipped_tie == {"decisive_fraction": 0.5, "decisive_mismatch": 0.0}
    assert _decisive(probs, ref, np.array([[0, 1]], np.uint8))["decisive_mismatch"] == 1.0


def _entry(scale: float) -> dict:
    wall = {s: summarize([scale * 10.0]) for s in TIMED_STAGES}
    return {"resolution": "480p", "objects": 1, "wall": wall}


def test_compare_reports_ratios():
    a = {"format": REPORT_FORMAT, "resolution_sweep": [_entry(1.0)], "object_sweep": []}
    b = {"format": REPORT_FORMAT, "resolution_sweep": [_entry(2.0)], "object_sweep": []}
    text = compare_reports(a, b)
    assert "480p x1 total mean" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("480p x1 total mean"))
    assert line.split()[-2] == "2.000"


def test_gpu_report_metrics_and_table():
    entry = {"precision": "fp16", "resolution": "480p", **_entry(1.0), "peak_device_mb": 100.0}
    trt = {**entry, "backend": "trt", "peak_device_mb": None}
    report = {
        "format": "mlvos-gpu-check",
        "variants": {
            "paper": {"configs": [entry], "cuda_graphs": [], "trt": {"configs": [trt]}},
            "tiny": {"configs": [entry], "cuda_graphs": []},
        },
        "status": "ok",
        "sections": {"tiny: trt": {"status": "skipped: tensorrt not importable", "benign": True}},
    }
    m = comparable_metrics(report)
    assert m["paper fp16 480p total mean"] == (10.0, "ms")
    assert m["tiny fp16 480p total mean"] == (10.0, "ms")
    assert m["paper trt fp16 480p total mean"] == (10.0, "ms")
    table = final_table(report)
    assert "paper    trt fp16" in table and "tiny     fp16" in table
    assert table.endswith("sections not ok: none")
    # version 1 reports (one variant, flat configs) still compare
    v1 = {"format": "mlvos-gpu-check", "configs": [entry]}
    assert comparable_metrics(v1)["fp16 480p total mean"] == (10.0, "ms")
