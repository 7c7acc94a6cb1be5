"""`mlvos benchmark` on a tiny untrained fp32-only export and a 2-sequence synthetic set: the
rows and columns of the table, the written files, J&F equal to `mlvos eval` on the same
predictions, rows that say why they cannot run, and the bad-input errors."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")

from mlvos.cli import main as mlvos  # noqa: E402
from mlvos.data.evaluate import evaluate_folders  # noqa: E402
from mlvos.data.synth import make_synthetic_dataset  # noqa: E402
from mlvos.errors import InputError  # noqa: E402
from mlvos.export.api import export_checkpoint  # noqa: E402
from mlvos.model.checkpoint import save_checkpoint  # noqa: E402
from mlvos.model.registry import build_model  # noqa: E402
from mlvos.profiling.benchmark import (  # noqa: E402
    COLUMNS,
    TABLE_FILES,
    BenchmarkConfig,
    run_benchmark,
)

pytestmark = pytest.mark.slow

# Two objects at 64x96 so the timed run tracks several; every frame of each sequence is scored
# (--max-frames 0), so `mlvos eval` can score the saved predictions.
SHORT = ["--resolution", "64x96", "--objects", "2", "--warmup", "1", "--iters", "2",
         "--max-frames", "0", "--threads", "1"]


def _main_in_module_fixture(argv: list[str]) -> int:
    """mlvos.cli.main, then the "mlvos" logger as it was: conftest's fixture that undoes main's
    logging setup is function-scoped and would save the configured logger as the state to
    restore (pytest then attaches its capture handlers to the non-propagating logger)."""
    logger = logging.getLogger("mlvos")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        return mlvos(argv)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(export dir with fp32 graphs only, validation set, benchmark --out) after one run."""
    root = tmp_path_factory.mktemp("benchmark")
    ckpt = save_checkpoint(root / "tiny.pt", build_model("tiny", seed=0))
    export = export_checkpoint(ckpt, root / "export", precisions=("fp32",), capacity=4,
                               validate=False)
    data = make_synthetic_dataset(root / "val", sequences=2, frames=5, seed=0, height=64,
                                  width=96, min_objects=2, max_objects=2)
    out = root / "out"
    argv = ["benchmark", "--model", str(export), "--data", str(data), "--out", str(out),
            "--save-pred", *SHORT]
    assert _main_in_module_fixture(argv) == 0
    return export, data, out


@pytest.fixture(scope="module")
def report(setup) -> dict:
    return json.loads((setup[2] / "table.json").read_text())


def _row(report: dict, backend: str, precision: str) -> dict:
    (row,) = [r for r in report["rows"] if (r["backend"], r["precision"]) == (backend, precision)]
    return row


def test_rows_and_columns(report):
    got = [(r["backend"], r["precision"], r["status"]) for r in report["rows"]]
    assert got[:4] == [("torch", "fp32", "ok"), ("ort", "fp32", "ok"),
                       ("ort", "fp16", "skipped"), ("ort", "int8", "skipped")]
    assert got[4][0] == "trt" and len(got) >= 5  # skipped here, or one row per precision
    for backend in ("torch", "ort"):
        r = _row(report, backend, "fp32")
        for key in ("size_mb", "jf", "p50_ms", "p90_ms", "fps", "peak_rss_mb"):
            assert r[key] is not None and r[key] > 0, key
        assert r["p50_ms"] <= r["p90_ms"]
        assert r["details"]["timing"]["n"] == 2  # --iters
    assert report["timing"]["objects"] == 2 and report["timing"]["resolution"] == "64x96"


def test_files_written(setup, report):
    out = setup[2]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(TABLE_FILES)
    with open(out / "table.csv") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 1 + len(report["rows"])
    md = (out / "table.md").read_text()
    for head in ("backend", "precision", "size (MB)", "J&F (%)", "ms/frame p50", "p90", "FPS",
                 "peak RSS (MB)", "notes"):
        assert f"| {head} " in md.splitlines()[0] + " "
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == len(report["rows"]) + 1  # header + one line per row


def test_jf_equals_mlvos_eval(setup, report, tmp_path):
    _, data, out = setup
    gt = data / "Annotations" / "480p"
    for tag in ("torch-fp32", "ort-fp32"):
        row = _row(report, *tag.split("-"))
        js = tmp_path / f"{tag}.json"
        assert mlvos(["eval", "--gt", str(gt), "--pred", str(out / "pred" / tag),
                      "--json", str(js)]) == 0
        assert row["jf"] == pytest.approx(json.loads(js.read_text())["J&F-Mean"], abs=1e-9)
        summary = evaluate_folders(gt, out / "pred" / tag).summary()
        assert (row["j"], row["f"]) == pytest.approx((summary["J-Mean"], summary["F-Mean"]))


def test_absent_rows_say_why(setup, report):
    export = setup[0]
    fp16, int8 = _row(report, "ort", "fp16"), _row(report, "ort", "int8")
    assert "not exported" in fp16["note"] and "--precision fp32 fp16" in fp16["note"]
    assert int8["note"].startswith("not calibrated: run `mlvos calib --model")
    assert str(export) in int8["note"]
    for r in (fp16, int8):
        assert r["jf"] is None and r["p50_ms"] is None
    md = (setup[2] / "table.md").read_text()
    assert "not calibrated: run `mlvos calib" in md
    trt = [r for r in report["rows"] if r["backend"] == "trt"]
    if trt[0]["status"] == "skipped" and trt[0]["precision"] == "-":
        assert trt[0]["note"].startswith("TensorRT not usable here: ")


def test_bad_input(setup, tmp_path, capsys):
    export, data, _ = setup
    with pytest.raises(InputError, match="does not exist; make one with `mlvos export"):
        run_benchmark(BenchmarkConfig(model=str(tmp_path / "nope"), data=str(data)))
    with pytest.raises(InputError, match="unknown backend.*choose from ort, trt, torch"):
        run_benchmark(BenchmarkConfig(model=str(export), data=str(data), backends=("onnx",)))
    with pytest.raises(InputError, match="--max-frames must be >= 3"):
        run_benchmark(BenchmarkConfig(model=str(export), data=str(data), max_frames=2))
    capsys.readouterr()
    for argv in (["--model", str(export), "--data", str(tmp_path / "none")],
                 ["--checkpoint", str(tmp_path / "none.pt"), "--data", str(data)],
                 ["--model", str(export), "--data", str(data), "--backends", "ort,onnx"]):
        assert mlvos(["benchmark", *argv, "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mlvos benchmark: error: ") and len(err.strip().splitlines()) == 1
    assert not (Path(tmp_path) / "out").exists()
