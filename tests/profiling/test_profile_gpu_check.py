"""`mlvos profile gpu-check`: the --smoke run on the CPU (both variants, the numerics against the
CPU reference, the TensorRT part skipped), its failure paths (no CUDA, spent time budget) that
must still write a report, and the real check on a GPU (gpu marker)."""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")

from mlvos.cli import main  # noqa: E402
from mlvos.errors import InputError  # noqa: E402
from mlvos.profiling import gpu_torch, gpu_trt  # noqa: E402
from mlvos.profiling.gpu_check import REPORT_FILE, _settings, run_gpu_check  # noqa: E402
from mlvos.profiling.gpu_report import final_table  # noqa: E402


def test_smoke_run_writes_report(tmp_path, capsys):
    argv = ["profile", "gpu-check", "--smoke", "--variant", "tiny", "paper", "--out", str(tmp_path)]
    status = main(argv)
    data = json.loads((tmp_path / REPORT_FILE).read_text())
    assert status == 0, data["errors"]
    assert data["status"] == "ok" and data["smoke"] and data["version"] == 2
    assert list(data["variants"]) == ["tiny", "paper"]
    for variant, part in data["variants"].items():
        (config,) = part["configs"]
        assert config["variant"] == variant and config["precision"] == "fp32"
        assert config["resolution"] == "64x96"
        assert config["frames_timed"] >= 3 and config["stage_sum_check"]["ok"]
        assert config["wall"]["total"]["fps"] > 0 and config["gmacs"]["total"] > 0
        section = data["sections"][f"{variant} fp32 64x96: cuda graphs"]
        assert section["status"] == "skipped: needs CUDA"
        ag = part["agreement"]
        assert ag["mean_iou"] == 1.0 and ag["one_step"]["mean_iou"] == 1.0
        # numerics vs the CPU FP32 reference: here the "device" is the CPU itself
        num = part["numerics"]
        assert num["reference"] == "torch backend, CPU, fp32" and num["frames"] >= 2
        (compared,) = num["compared"].values()
        assert compared["one_step"]["min_object_iou"] == 1.0 and compared["mean_iou"] == 1.0
        assert compared["one_step"]["obj_probs_max_abs"] == 0.0
        assert compared["one_step"]["decisive_mismatch"] == 0.0
        assert data["sections"][f"{variant}: trt"] == {
            "status": "skipped: tensorrt not importable",
            "benign": True,
        }
    assert data["variants"]["paper"]["params_m"] > 50 > data["variants"]["tiny"]["params_m"]
    assert data["trt"] == {"available": False, "reason": "tensorrt not importable"}
    assert "tensorrt" not in sys.modules
    csv = (tmp_path / "gpu_check.csv").read_text().splitlines()
    assert csv[0].startswith("variant,backend,precision") and any("paper,torch" in r for r in csv)
    assert (tmp_path / "gpu_latency.png").is_file()
    # Progress lines (the mlvos.profiling loggers), then the final table and the report's path.
    out = capsys.readouterr().out
    assert "] tiny fp32 64x96: " in out and "] paper fp32 cpu vs cpu fp32: one-step" in out
    assert "TensorRT part skipped: tensorrt not importable" in out and "status: ok" in out
    assert out.rstrip().endswith(f"wrote {tmp_path / REPORT_FILE} ({data['elapsed_s']:.0f} s)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_reports_failure_instead_of_raising(tmp_path):
    report = run_gpu_check(out=tmp_path, smoke=True, device="cuda")
    assert report["status"] == "failed"
    assert "no CUDA device" in report["errors"][0]["error"]
    assert json.loads((tmp_path / REPORT_FILE).read_text())["status"] == "failed"


def test_spent_budget_skips_sections_and_keeps_partial_results(tmp_path):
    report = run_gpu_check(out=tmp_path, smoke=True, budget_s=0.01)
    assert report["status"] == "partial"
    assert report["sections"]["setup"]["status"] == "ok"  # setup always runs
    skipped = [k for k, v in report["sections"].items() if "time budget" in v["status"]]
    assert "tiny: build" in skipped
    data = json.loads((tmp_path / REPORT_FILE).read_text())
    assert data["status"] == "partial" and "sections not ok: ['tiny: build'" in final_table(data)


def test_budget_running_out_midway_keeps_what_was_measured(tmp_path, monkeypatch):
    """The first latency section spends the whole budget: the later sections are skipped for
    time, the report keeps the measured config, and CSV, plots and the table still come."""
    measure = gpu_torch._latency

    def latency_then_spend(ctx, *args):
        entry = measure(ctx, *args)
        ctx.chk.start -= 1e6  # as if the budget ran out during this section
        return entry

    monkeypatch.setattr(gpu_torch, "_latency", latency_then_spend)
    report = run_gpu_check(out=tmp_path, smoke=True, variants=("tiny",), budget_s=30)
    assert report["status"] == "partial"
    assert report["sections"]["tiny fp32 64x96: latency"]["status"] == "ok"
    for name in ("tiny fp32 64x96: labels", "tiny: numerics vs cpu fp32"):
        assert report["sections"][name]["status"] == "skipped: time budget spent"
    assert report["sections"]["csv"]["status"] == report["sections"]["plots"]["status"] == "ok"
    data = json.loads((tmp_path / REPORT_FILE).read_text())
    assert len(data["variants"]["tiny"]["configs"]) == 1
    assert data["variants"]["tiny"]["agreement"] == {"status": "missing label runs", "have": []}
    assert "tiny     fp32      64x96" in final_table(data)


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown variant.*choose from .*tiny"):
        run_gpu_check(out=tmp_path, smoke=True, variants=("tiny", "huge"))


def test_trt_status_never_imports_tensorrt_without_a_device(monkeypatch):
    """TensorRT found but no usable CUDA device (or a CPU run): skipped, never imported."""
    from mlvos.runtime.backends import cuda_mem

    found = object()
    monkeypatch.setattr(
        gpu_trt.importlib.util, "find_spec", lambda name: found if name == "tensorrt" else None
    )
    imported = []
    monkeypatch.setattr(gpu_trt.importlib, "import_module", lambda name: imported.append(name))
    ok, why = gpu_trt.trt_status(_settings(True))
    assert (ok, why) == (False, "needs CUDA (device cpu)")
    monkeypatch.setattr(cuda_mem, "cuda_device_status", lambda device: (False, "no driver"))
    ok, why = gpu_trt.trt_status(_settings(False))
    assert not ok and why == "no usable CUDA device for TensorRT: no driver"
    assert imported == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_on_a_gpu(tmp_path):
    report = run_gpu_check(
        out=tmp_path, variants=("tiny",), resolutions=("480p",), iters=5, budget_s=90, trt=False
    )
    assert report["status"] == "ok", report["errors"]
    part = report["variants"]["tiny"]
    assert {c["precision"] for c in part["configs"]} == {"fp16", "fp32"}
    assert all(c["device"] and c["peak_device_mb"] > 0 for c in part["configs"])
    assert part["cuda_graphs"] and part["agreement"]["one_step"]["mean_iou"] is not None
    assert set(part["numerics"]["compared"]) == {"fp16", "fp32"}
