"""`mlvos profile gpu-check`: the --smoke run on the CPU, its failure paths (no CUDA, spent time
budget) that must still write a report, and the real check on a GPU (gpu marker)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from mlvos.cli import main  # noqa: E402
from mlvos.profiling.gpu_check import REPORT_FILE, run_gpu_check  # noqa: E402


def test_smoke_run_writes_report(tmp_path, capsys):
    status = main(["profile", "gpu-check", "--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / REPORT_FILE).read_text())
    assert status == 0, data["errors"]
    assert data["status"] == "ok" and data["smoke"]
    (config,) = data["configs"]
    assert config["precision"] == "fp32" and config["resolution"] == "64x96"
    assert config["frames_timed"] >= 3 and config["stage_sum_check"]["ok"]
    assert config["wall"]["total"]["fps"] > 0 and config["gmacs"]["total"] > 0
    assert data["sections"]["fp32 64x96: cuda graphs"]["status"] == "skipped: needs CUDA"
    ag = data["agreement"]
    assert ag["mean_iou"] == 1.0 and ag["one_step"]["mean_iou"] == 1.0
    assert (tmp_path / "gpu_check.csv").is_file() and (tmp_path / "gpu_latency.png").is_file()
    # Progress lines (the mlvos.profiling loggers), then the final table and the report's path.
    out = capsys.readouterr().out
    assert "] fp32 64x96: " in out and "status: ok" in out
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
    assert skipped
    assert json.loads((tmp_path / REPORT_FILE).read_text())["status"] == "partial"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_on_a_gpu(tmp_path):
    report = run_gpu_check(
        out=tmp_path, variant="tiny", resolutions=("480p",), iters=5, budget_s=90
    )
    assert report["status"] == "ok", report["errors"]
    assert {c["precision"] for c in report["configs"]} == {"fp16", "fp32"}
    assert all(c["device"] and c["peak_device_mb"] > 0 for c in report["configs"])
    assert report["cuda_graphs"] and report["agreement"]["one_step"]["mean_iou"] is not None
