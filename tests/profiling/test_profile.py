"""`mlvos profile` on a tiny export: report contents, the stage-sum check, plots, the export
cache behind --checkpoint, compare, the torch backend, and ONNX MAC counts vs model.flops."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from mlvos.errors import InputError, MlvosError  # noqa: E402
from mlvos.model.checkpoint import save_checkpoint  # noqa: E402
from mlvos.model.flops import stage_costs  # noqa: E402
from mlvos.model.registry import build_model  # noqa: E402
from mlvos.profiling import (  # noqa: E402
    STAGE_SUM_TOLERANCE,
    WallTimer,
    run_video,
    synthetic_video,
)
from mlvos.profiling import cli as profile_cli  # noqa: E402
from mlvos.profiling.onnx_macs import MacCountError, graph_macs, stage_macs  # noqa: E402
from mlvos.runtime.backends import open_runner  # noqa: E402
from mlvos.runtime.spec import TIMED_STAGES  # noqa: E402

CAPACITY = 4
PLOTS = (
    "latency_vs_resolution.png",
    "latency_vs_objects.png",
    "latency_vs_memory.png",
    "latency_vs_frame.png",
    "stage_breakdown.png",
)
SWEEP = ["--resolutions", "64x96,96x128", "--objects", "1,2", "--long", "10"]
SHORT = ["--warmup", "1", "--iters", "3", "--threads", "1", "--capacity", str(CAPACITY)]


def mlvos(argv: list[str]) -> int:
    """`mlvos ...` with the profile command, whether or not mlvos.cli registers it yet."""
    parser = argparse.ArgumentParser(prog="mlvos")
    sub = parser.add_subparsers(dest="command")
    profile_cli.register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MlvosError as e:
        print(f"mlvos {args.command}: error: {e}")
        return 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, build_model("tiny", seed=0))


@pytest.fixture(scope="module")
def profiled(checkpoint, tmp_path_factory):
    """One short profile through --checkpoint (exported into a cache folder first)."""
    root = tmp_path_factory.mktemp("profile")
    export_dir, out = root / "export", root / "report"
    argv = ["profile", "--checkpoint", str(checkpoint), "--export-dir", str(export_dir)]
    assert mlvos([*argv, "--out", str(out), *SWEEP, *SHORT]) == 0
    return out, export_dir


@pytest.fixture(scope="module")
def report(profiled) -> dict:
    return json.loads((profiled[0] / "report.json").read_text())


def test_report_has_every_section(report):
    for key in (
        "env",
        "config",
        "model",
        "timer",
        "resolution_sweep",
        "object_sweep",
        "memory_sweep",
        "long_run",
        "memory",
        "checks",
        "efficiency",
    ):
        assert key in report, key
    assert report["format"] == "mlvos-profile"
    assert report["env"]["onnxruntime"] and report["model"]["variant"] == "tiny"
    assert report["timer"]["kind"] == "wall"  # CPU
    assert [e["resolution"] for e in report["resolution_sweep"]] == ["64x96", "96x128"]
    assert [e["objects"] for e in report["object_sweep"]] == [1, 2]
    for e in report["resolution_sweep"] + report["object_sweep"]:
        assert e["frames_timed"] == 3
        for s in TIMED_STAGES:
            st = e["wall"][s]
            assert {"mean", "p50", "p90", "p99", "fps"} <= set(st) and st["mean"] >= 0
        assert e["gmacs"]["total"] > 0 and e["tflops"]["total"] > 0
        assert e["peak_rss_mb"] > 0
    assert report["efficiency"]["error"] is None
    assert report["memory"]["peak_rss_mb"] > 0


def test_memory_encoder_work_counts_only_the_frames_that_ran_it(report):
    # tiny keeps no previous-frame slot (its config's schedule, which the profile uses and
    # states): of the timed frames 2-4 (warm-up 1) none is a 5th frame, so the memory encoder
    # adds no work per frame there, where a full write per frame would overstate its rate
    from mlvos.profiling.measure import RunTimings

    assert (report["config"]["mem_every"], report["config"]["prev_every"]) == (5, 5)
    assert "no previous-frame slot" in report["schedule"]
    for e in report["resolution_sweep"] + report["object_sweep"]:
        assert e["memory_encoder_share"] == 0.0 and e["gmacs"]["memory_encoder"] == 0.0
        assert e["gmacs"]["total"] == pytest.approx(
            sum(v for k, v in e["gmacs"].items() if k != "total"))
    run = RunTimings({}, None, skip=2, memory_steps=[True, False, True, False, False, True])
    assert run.memory_share() == 0.5
    assert RunTimings({}, None, skip=1).memory_share() == 1.0


def test_object_slope_is_fitted_from_the_sweep(report):
    from mlvos.profiling.report import object_slope, object_slope_text

    sl = object_slope(report)
    one, two = (e["wall"]["total"]["mean"] for e in report["object_sweep"])
    assert sl["ms_per_object"] == pytest.approx(two - one)  # two points: the difference
    assert sl["ratio"]["2"] == pytest.approx(two / one)
    assert f"2 objects {two / one:.2f}x of 1" in object_slope_text(report)
    assert object_slope({"object_sweep": report["object_sweep"][:1]}) is None


def test_stage_times_add_up_to_end_to_end(report):
    check = report["checks"]["stage_sum"]
    assert check["ok"] and check["tolerance"] == STAGE_SUM_TOLERANCE
    assert len(check["details"]) == 3  # 64x96 x1, 96x128 x1, 64x96 x2
    for e in report["resolution_sweep"] + report["object_sweep"]:
        parts = sum(e["wall"][s]["mean"] for s in TIMED_STAGES if s != "total")
        total = e["wall"]["total"]["mean"]
        assert abs(parts - total) <= STAGE_SUM_TOLERANCE * total


def test_memory_sweep_and_long_run(report):
    ms = report["memory_sweep"]
    assert ms["capacity"] == CAPACITY
    assert [p["valid_slots"] for p in ms["points"]] == [1, 2, 3, 4]
    assert all(p["read_decoder"]["mean"] > 0 and p["gmacs"] > 0 for p in ms["points"])
    lr = report["long_run"]
    assert len(lr["per_frame_ms"]) == 11  # annotated frame + 10
    assert lr["late_over_early"] > 0 and isinstance(lr["flat"], bool)
    assert lr["rss_growth_mb"] is not None


def test_files_are_written(profiled):
    out, _ = profiled
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    header = (out / "stages.csv").read_text().splitlines()[0]
    assert header.startswith("sweep,resolution,height,width,objects,stage")
    assert len((out / "long_run.csv").read_text().splitlines()) == 12
    assert len((out / "memory_sweep.csv").read_text().splitlines()) == 1 + CAPACITY


def test_checkpoint_export_is_reused(profiled, checkpoint, tmp_path, capsys):
    _, export_dir = profiled
    argv = [
        "profile",
        "--checkpoint",
        str(checkpoint),
        "--export-dir",
        str(export_dir),
        "--out",
        str(tmp_path),
        "--resolutions",
        "64x96",
        "--objects",
        "1",
        "--memory",
        "1",
        "--long",
        "0",
        "--no-plots",
        *SHORT,
    ]
    assert mlvos(argv) == 0
    assert "reusing export" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.png"))


def test_compare_command(profiled, tmp_path, capsys):
    out, _ = profiled
    data = json.loads((out / "report.json").read_text())
    for e in data["resolution_sweep"]:
        for st in e["wall"].values():
            st["mean"] *= 2
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(data))
    assert mlvos(["profile", "compare", str(out / "report.json"), str(slower)]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("64x96 x1 total mean"))
    assert line.split()[-2] == "2.000"
    assert mlvos(["profile", "compare", str(out / "stages.csv"), str(slower)]) == 1


def test_torch_backend_on_a_checkpoint(checkpoint, tmp_path):
    argv = [
        "profile",
        "--checkpoint",
        str(checkpoint),
        "--backend",
        "torch",
        "--out",
        str(tmp_path),
        "--resolutions",
        "64x96",
        "--objects",
        "1",
        "--memory",
        "1,4",
        "--long",
        "0",
        "--no-plots",
        *SHORT,
    ]
    assert mlvos(argv) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["model"]["backend"] == "torch"
    assert data["efficiency"]["source"].startswith("torch")
    assert data["resolution_sweep"][0]["gmacs"]["total"] > 0


def test_bad_arguments(checkpoint, tmp_path):
    assert mlvos(["profile", "--out", str(tmp_path)]) == 1  # no model
    argv = [
        "profile",
        "--checkpoint",
        str(checkpoint),
        "--backend",
        "torch",
        "--out",
        str(tmp_path),
        "--memory",
        "9",
        "--resolutions",
        "64x96",
        *SHORT,
    ]
    assert mlvos(argv) == 1  # 9 slots > capacity


def test_device_timer_path(profiled):
    """A runner with a device timer gets per-stage device times from the TimedRunner proxy."""

    class DeviceWall(WallTimer):
        kind = "device"

    video = synthetic_video(0, 64, 96, 2, unique=3)
    with open_runner(profiled[1], threads=1) as runner:
        run = run_video(runner, video, frames=4, warmup=1, timer=DeviceWall(runner.synchronize))
    dev, wall = run.timed("device"), run.timed("wall")
    assert len(dev["total"]) == len(wall["total"]) == 3
    for d, w in zip(dev["total"], wall["total"]):
        assert 0 < d <= w
    assert all(v > 0 for v in dev["read_decoder"])


# ------------------------------------------------------------------------------ ONNX MACs
@pytest.mark.parametrize("size", [(64, 96), (480, 864)])
def test_onnx_macs_match_torch_flops(profiled, size):
    """Query and read+decode agree exactly; the exported memory encoder is ~1.5% cheaper
    because the export drops convolutions of the last backbone level whose outputs (strides 4
    and 8) the memory encoder never uses, while eager PyTorch still runs them."""
    h, w = size
    onnx_ = stage_macs(profiled[1], height=h, width=w, objects=1)
    ref = stage_costs("tiny", h, w, CAPACITY)
    pairs = {
        "query_encoder": ref.query_gmac,
        "memory_encoder": ref.memory_write_gmac(1),
        "read_decoder": ref.read_gmac(1),
    }
    for graph, torch_gmac in pairs.items():
        assert onnx_[graph].gmacs == pytest.approx(torch_gmac, rel=0.03), graph
    assert onnx_["read_decoder"].by_op["MatMul"] > 0  # the memory read is counted


def test_onnx_macs_scale_with_objects(profiled):
    one = stage_macs(profiled[1], height=64, width=96, objects=1)
    three = stage_macs(profiled[1], height=64, width=96, objects=3)
    assert three["query_encoder"].macs == one["query_encoder"].macs
    two = stage_macs(profiled[1], height=64, width=96, objects=2)
    # memory_encoder (late fusion): the frame's features once, then a light path per object
    mem_per_object = two["memory_encoder"].macs - one["memory_encoder"].macs
    assert 0 < mem_per_object < 0.5 * one["memory_encoder"].macs
    assert three["memory_encoder"].macs == one["memory_encoder"].macs + 2 * mem_per_object
    # read_decoder: the affinity (object-free key bank) and the skip convolutions run once per
    # frame, the rest per object, as the torch count says
    per_object = two["read_decoder"].macs - one["read_decoder"].macs
    assert 0 < per_object < one["read_decoder"].macs
    assert three["read_decoder"].macs == one["read_decoder"].macs + 2 * per_object
    ref = stage_costs("tiny", 64, 96, CAPACITY)
    assert three["read_decoder"].gmacs == pytest.approx(ref.read_gmac(3), rel=0.03)
    assert three["memory_encoder"].gmacs == pytest.approx(ref.memory_write_gmac(3), rel=0.03)


def test_onnx_macs_errors(profiled):
    path = profiled[1] / "read_decoder.fp32.onnx"
    with pytest.raises(MacCountError, match="needs a value for 'O'"):
        graph_macs(path, {"H": 64, "W": 96})
    with pytest.raises(InputError, match="multiple of the stride"):
        stage_macs(profiled[1], height=65, width=96)
    assert np.isclose(
        graph_macs(path, {"H": 64, "W": 96, "O": 1}).gmacs,
        stage_macs(profiled[1], height=64, width=96)["read_decoder"].gmacs,
    )


# ------------------------------------------------------------------------------ content
def test_profile_on_real_footage_input(profiled, tmp_path):
    """--input VIDEO --mask PNG: the video's own size by default, its first-frame ids, and the
    report and summary name the content measured."""
    cv2 = pytest.importorskip("cv2")
    from mlvos.data.synth import synth_sequence
    from mlvos.palette import write_mask

    pairs = list(synth_sequence(4, 8, 64, 96, num_objects=2))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for frame, _ in pairs:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    mask = tmp_path / "00000.png"
    write_mask(mask, pairs[0][1])
    out = tmp_path / "report"
    base = ["profile", "--model", str(profiled[1]), "--input", str(video), "--mask", str(mask),
            "--long", "0", "--no-plots", "--warmup", "1", "--iters", "3", "--threads", "1"]
    out = tmp_path / "report"
    assert mlvos([*base, "--objects", "1,2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["resolutions"] == ["64x96"]
    assert report["videos"]["content"] == "input"
    assert "real footage" in report["videos"]["source"] and "clip.avi" in report["videos"]["source"]
    assert [e["objects"] for e in report["object_sweep"]] == [1, 2]
    # more objects than the mask holds: one clear error, no report
    assert mlvos([*base, "--objects", "5", "--out", str(tmp_path / "r2")]) == 1
    assert not (tmp_path / "r2" / "report.json").exists()
    # a mask without --input
    assert mlvos(["profile", "--model", str(profiled[1]), "--mask", str(mask), "--out",
                  str(tmp_path / "r3")]) == 1


def test_profile_content_falls_back_without_photos(monkeypatch, tmp_path):
    from mlvos.profiling.content import profile_video

    monkeypatch.setenv("MLVOS_PHOTOS", str(tmp_path / "none"))
    video = profile_video("natural", 0, 64, 96, 2, frames=3)
    assert video.source.startswith("procedural frames")
    assert len(video.frames) == 3


def test_profile_nodes_explains_read_decoder(profiled, tmp_path):
    """`mlvos profile nodes`: onnxruntime's per-node times of read_decoder, grouped into the
    memory read, the decoder's per-frame and per-object parts and the aggregation."""
    out = tmp_path / "nodes"
    argv = ["profile", "nodes", "--model", str(profiled[1]), "--resolutions", "64x96",
            "--objects", "1,3", "--iters", "1", "--threads", "1", "--out", str(out)]
    assert mlvos(argv) == 0
    report = json.loads((out / "nodes.json").read_text())
    assert [c["objects"] for c in report["configs"]] == [1, 3]
    for c in report["configs"]:
        assert {"memory read", "decoder, per frame", "decoder, per object",
                "aggregation"} <= set(c["by_part"])
        assert c["kernel_ms"] > 0 and c["top_nodes"]
    assert report["bank_key"][0] == 1  # tiny's object-free key bank
    assert "| 64x96 | 3 |" in (out / "nodes.md").read_text()


def test_report_measures_the_gemm_rate_and_each_stage_share(report):
    gemm = report["gemm"]
    assert gemm["error"] is None and gemm["fp32_gflops"] > 0.1
    assert "onnxruntime MatMul" in gemm["source"]
    entry = report["resolution_sweep"][0]
    frac = entry["gemm_fraction"]
    for stage in ("query_encoder", "read_decoder", "total"):
        assert frac[stage] == pytest.approx(entry["tflops"][stage] * 1e3 / gemm["fp32_gflops"])
